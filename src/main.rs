//! The `peercache` binary: parse the command line, run the subcommand, map errors to exit codes.

/// The allocator of every build: a start-up arena, then mimalloc (musl's own is slow under a
/// multi-threaded server's load); see `peercache::alloc`.
#[global_allocator]
static ALLOCATOR: peercache::alloc::ProcessAllocator = peercache::alloc::ProcessAllocator;

fn main() -> std::process::ExitCode {
    peercache::cli::main()
}

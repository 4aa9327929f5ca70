//! The `peercache` binary: parse the command line, run the subcommand, map errors to exit codes.

/// The allocator of every build (musl's own is slow under a multi-threaded server's load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    peercache::cli::main()
}

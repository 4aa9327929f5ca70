//! Link settings of the static musl binary.
//!
//! The static-pie binary relocates itself at start (musl's `_dlstart`): with classic RELA
//! entries that is 32,000 of them, 24 bytes each (770 KB of `.rela.dyn`) read on every run of
//! every command. Packed relative relocations (DT_RELR, which the musl Rust ships, 1.2.5,
//! applies) are a bitmap of a few KB: a smaller binary and less to read before `main`, with the
//! same position-independent layout (and ASLR). Only on x86_64 musl, where it is measured
//! (docs/performance-startup.md); the flag needs binutils ≥ 2.38 or lld.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_ENV") == "musl" && var("CARGO_CFG_TARGET_ARCH") == "x86_64" {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

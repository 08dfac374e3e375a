//! Link arguments of the `wasmvisor` binary.
//!
//! - Position-dependent: a PIE carries about 36,000 relative relocations
//!   (wasmtime's vtables and tables) that the dynamic loader applies at
//!   every start, writing to every page of `.data.rel.ro` they touch.
//!   Resolved at link time instead, those pages stay clean file pages,
//!   which is faster to start and keeps them out of the process's private
//!   memory (docs/performance.md).
//! - Functions a run executes first: `symbol-order.txt` lists the
//!   functions of the binary a run under one precompiled policy executes
//!   (`scripts/symbol-order.sh` records it), and the linker (LLD, Rust's
//!   default here) places them together, so the pages of code a run
//!   touches, and the kernel maps around each fault, are fewer. Names that
//!   no longer exist are skipped silently.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

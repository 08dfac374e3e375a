//! Links the `wasmvisor` binary as a position-dependent executable: a PIE
//! carries about 36,000 relative relocations (wasmtime's vtables and
//! tables) that the dynamic loader applies at every start, writing to
//! every page of `.data.rel.ro` they touch. Resolved at link time instead,
//! those pages stay clean file pages, which is faster to start and keeps
//! them out of the process's private memory (docs/performance.md).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}

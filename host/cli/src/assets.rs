//! Finding the built demo assets (guests, policies, demo config).
//!
//! `make demo` puts them in `target/assets`, next to the binary's folder;
//! `WASMVISOR_ASSETS` overrides the search.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The assets folder, or a one-line error saying how to build it.
pub fn dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMVISOR_ASSETS") {
        let dir = PathBuf::from(dir);
        if dir.join("demo.toml").is_file() {
            return Ok(dir);
        }
        bail!(
            "WASMVISOR_ASSETS={} holds no demo.toml; run `make assets` first",
            dir.display()
        );
    }
    let exe = std::env::current_exe()?;
    let mut candidates = Vec::new();
    if let Some(bin_dir) = exe.parent() {
        // target/release/wasmvisor -> target/assets
        if let Some(target) = bin_dir.parent() {
            candidates.push(target.join("assets"));
            // target/release/deps/... (test binaries) -> target/assets
            if let Some(up) = target.parent() {
                candidates.push(up.join("assets"));
            }
        }
    }
    for c in &candidates {
        if c.join("demo.toml").is_file() {
            return Ok(c.clone());
        }
    }
    bail!("the demo assets are not built (looked in target/assets); run `make demo` or `make assets` first, or pass --guest and --policy")
}

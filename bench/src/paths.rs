//! Where the built artefacts are, and the work directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where the built artefacts are.
pub struct Paths {
    pub binary: PathBuf,
    pub policies: PathBuf,
    pub bench_bin: PathBuf,
    /// A PVH kernel of ~20 instructions that ends through debug-exit.
    pub pvh_exit: PathBuf,
    pub pci_bin: PathBuf,
    pub testdev: PathBuf,
    /// The fuzzme guest and its seed corpus (the snapshot section).
    pub fuzzme: PathBuf,
    pub fuzzme_seeds: PathBuf,
    /// Components built before a contract change (`tests/prebuilt`).
    pub prebuilt: PathBuf,
    pub work: PathBuf,
}

impl Paths {
    pub fn find() -> Result<Paths> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("no workspace root")?
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let p = Paths {
            binary: target.join("release/wasmvisor"),
            policies: target.join("assets/policies"),
            bench_bin: target.join("assets/guests/bench.bin"),
            pvh_exit: target.join("assets/guests/pvh-exit.elf"),
            pci_bin: target.join("assets/guests/pci.bin"),
            testdev: target.join("release/wasmvisor-vfio-user-testdev"),
            fuzzme: target.join("assets/guests/fuzzme.elf"),
            fuzzme_seeds: root.join("examples/guests/fuzzme-seeds"),
            prebuilt: root.join("tests/prebuilt"),
            work: target.join("bench"),
        };
        for f in [
            &p.binary,
            &p.bench_bin,
            &p.pvh_exit,
            &p.pci_bin,
            &p.testdev,
            &p.fuzzme,
            &p.policies.join("noop.wasm"),
        ] {
            if !f.exists() {
                bail!("{} is missing: run `make build` first", f.display());
            }
        }
        std::fs::create_dir_all(&p.work)
            .with_context(|| format!("cannot create {}", p.work.display()))?;
        Ok(p)
    }

    /// An empty cache directory `dir` under the work directory, with
    /// `policy` precompiled into it by `wasmvisor policy precompile`.
    pub fn fresh_cache(&self, dir: &str, policy: &str) -> Result<PathBuf> {
        let cache = self.work.join(dir);
        let _ = std::fs::remove_dir_all(&cache);
        let out = Command::new(&self.binary)
            .args(["policy", "precompile", "--policy-cache"])
            .arg(&cache)
            .arg(self.policies.join(format!("{policy}.wasm")))
            .output()
            .context("cannot run wasmvisor policy precompile")?;
        if !out.status.success() {
            bail!(
                "policy precompile failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(cache)
    }

    pub fn policy(&self, name: &str, config: &str) -> String {
        spec(&self.policies.join(format!("{name}.wasm")), config)
    }

    /// A policy of `tests/prebuilt`, by file name.
    pub fn prebuilt_policy(&self, file: &str, config: &str) -> String {
        spec(&self.prebuilt.join(file), config)
    }
}

/// A `--policy` argument: the path, and `:config` when there is one.
fn spec(path: &Path, config: &str) -> String {
    if config.is_empty() {
        path.display().to_string()
    } else {
        format!("{}:{config}", path.display())
    }
}

//! The snapshot directory on disk (`docs/snapshots.md`): a `MANIFEST`
//! naming every other file with its size and BLAKE3 digest, under a
//! header line with the format version and a digest of the manifest
//! itself. Everything is checked before anything is used.

use std::fs;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version this wasmvisor writes and reads.
pub const VERSION: u32 = 1;
/// The first word of the manifest.
const FORMAT: &str = "wasmvisor-snapshot";
/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST";
/// Largest manifest read.
const MAX_MANIFEST: u64 = 16 << 20;

/// Why a snapshot directory cannot be written or used; one line each.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {dir}: {reason}")]
    Io { dir: String, reason: String },
    #[error("snapshot {dir} is not a wasmvisor snapshot ({reason})")]
    NotSnapshot { dir: String, reason: String },
    #[error("snapshot {dir} is format version {found}; this wasmvisor reads version {VERSION}")]
    Version { dir: String, found: String },
    #[error("snapshot {dir} is damaged: {reason}")]
    Damaged { dir: String, reason: String },
    #[error("snapshot {dir} does not fit this host: {reason}")]
    Host { dir: String, reason: String },
    #[error("cannot snapshot this VM: {0}")]
    Refused(String),
}

/// One file of the snapshot, as the manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub name: String,
    pub bytes: u64,
    pub blake3: String,
}

/// The VM the snapshot restores into.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRecord {
    pub mem_bytes: u64,
    pub vcpus: u32,
    /// The in-kernel PIC, IOAPIC and PIT exist.
    pub irqchip: bool,
    /// `native` or `none`.
    pub serial: String,
    pub debug_exit: Option<u16>,
    /// The kernel image the policies' profile was read from.
    pub kernel_profile: Option<String>,
}

/// A CPUID entry as the vCPUs were given it (before per-vCPU APIC IDs).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CpuidRecord {
    pub function: u32,
    pub index: u32,
    pub indexed: bool,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// One policy, enough to load it again with its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRecord {
    pub name: String,
    /// Absolute path of the component.
    pub path: String,
    pub config: Vec<(String, String)>,
    /// Sandbox settings (`@key=value`) that rebuild its sandbox.
    pub sandbox: Vec<(String, String)>,
    /// `save-state` file per vCPU index.
    pub states: Vec<(u32, String)>,
}

/// The manifest's body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The wasmvisor version that wrote it.
    pub wasmvisor: String,
    pub vm: VmRecord,
    pub cpuid: Vec<CpuidRecord>,
    /// vCPU state file per vCPU index (vCPUs that had ended are absent).
    pub vcpus: Vec<(u32, String)>,
    pub vm_state: String,
    pub memory: String,
    /// Built-in device state files by device name.
    pub devices: Vec<(String, String)>,
    pub policies: Vec<PolicyRecord>,
    pub files: Vec<FileRecord>,
}

fn hex(hash: blake3::Hash) -> String {
    hash.to_hex().to_string()
}

/// Writes a snapshot into `dir`, which must not exist or be empty: the
/// files through `files.add`, then the manifest.
pub struct Writer {
    dir: PathBuf,
    files: Vec<FileRecord>,
}

impl Writer {
    pub fn create(dir: &Path) -> Result<Writer, SnapshotError> {
        let io = |e: std::io::Error| SnapshotError::Io {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        };
        if dir.exists() {
            let mut entries = fs::read_dir(dir).map_err(io)?;
            if entries.next().is_some() {
                return Err(SnapshotError::Io {
                    dir: dir.display().to_string(),
                    reason: "directory exists and is not empty".into(),
                });
            }
        } else {
            fs::create_dir_all(dir).map_err(io)?;
        }
        Ok(Writer {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        })
    }

    fn io_error(&self, e: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Io {
            dir: self.dir.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Writes file `name` through `fill`, hashing as it goes.
    pub fn add_with(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), SnapshotError> {
        struct Hashing<W> {
            inner: W,
            hasher: blake3::Hasher,
            bytes: u64,
        }
        impl<W: Write> Write for Hashing<W> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.inner.write(buf)?;
                self.hasher.update(&buf[..n]);
                self.bytes += n as u64;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.inner.flush()
            }
        }
        let file = fs::File::create(self.dir.join(name)).map_err(|e| self.io_error(e))?;
        let mut out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            bytes: 0,
        };
        fill(&mut out).map_err(|e| self.io_error(format!("{name}: {e}")))?;
        out.flush()
            .map_err(|e| self.io_error(format!("{name}: {e}")))?;
        self.files.push(FileRecord {
            name: name.to_string(),
            bytes: out.bytes,
            blake3: hex(out.hasher.finalize()),
        });
        Ok(())
    }

    pub fn add(&mut self, name: &str, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.add_with(name, |w| w.write_all(bytes))
    }

    /// Writes the manifest last (through a rename), so a directory with
    /// a manifest holds every file it names.
    pub fn finish(self, mut manifest: Manifest) -> Result<(), SnapshotError> {
        manifest.files = self.files.clone();
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| self.io_error(e))?;
        let mut text =
            format!("{FORMAT} {VERSION}\nblake3 {}\n", hex(blake3::hash(&body))).into_bytes();
        text.extend_from_slice(&body);
        text.push(b'\n');
        let staged = self.dir.join(".MANIFEST.tmp");
        fs::write(&staged, &text).map_err(|e| self.io_error(e))?;
        fs::rename(&staged, self.dir.join(MANIFEST)).map_err(|e| self.io_error(e))
    }
}

/// A snapshot directory whose manifest and files all check out.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Snapshot {
    /// Reads and checks the manifest and the size and digest of every file
    /// it names.
    pub fn open(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let shown = dir.display().to_string();
        let damaged = |reason: String| SnapshotError::Damaged {
            dir: shown.clone(),
            reason,
        };
        let path = dir.join(MANIFEST);
        let mut text = Vec::new();
        fs::File::open(&path)
            .and_then(|f| f.take(MAX_MANIFEST + 1).read_to_end(&mut text))
            .map_err(|e| SnapshotError::NotSnapshot {
                dir: shown.clone(),
                reason: format!("{MANIFEST}: {e}"),
            })?;
        if text.len() as u64 > MAX_MANIFEST {
            return Err(damaged(format!(
                "{MANIFEST} is larger than {MAX_MANIFEST} bytes"
            )));
        }
        let mut lines = text.splitn(3, |&b| b == b'\n');
        let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).to_string();
        let version = match first.split_once(' ') {
            Some((FORMAT, v)) => v.trim().to_string(),
            _ => {
                return Err(SnapshotError::NotSnapshot {
                    dir: shown,
                    reason: format!("{MANIFEST} does not start with `{FORMAT}`"),
                })
            }
        };
        if version != VERSION.to_string() {
            return Err(SnapshotError::Version {
                dir: shown,
                found: version,
            });
        }
        let digest_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).to_string();
        let digest = digest_line
            .strip_prefix("blake3 ")
            .ok_or_else(|| damaged(format!("{MANIFEST} lacks its digest line")))?;
        let body = lines.next().unwrap_or_default();
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        if hex(blake3::hash(body)) != digest.trim() {
            return Err(damaged(format!("{MANIFEST} does not match its digest")));
        }
        let manifest: Manifest = serde_json::from_slice(body)
            .map_err(|e| damaged(format!("{MANIFEST} is malformed: {e}")))?;
        for f in &manifest.files {
            check_file(dir, f).map_err(damaged)?;
        }
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The bytes of a file the manifest lists (checked again: it may have
    /// changed since `open`).
    pub fn read(&self, name: &str) -> Result<Vec<u8>, SnapshotError> {
        let damaged = |reason: String| SnapshotError::Damaged {
            dir: self.dir.display().to_string(),
            reason,
        };
        let record = self
            .manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| damaged(format!("the manifest does not list {name}")))?;
        let bytes = fs::read(self.dir.join(name)).map_err(|e| damaged(format!("{name}: {e}")))?;
        if bytes.len() as u64 != record.bytes || hex(blake3::hash(&bytes)) != record.blake3 {
            return Err(damaged(format!("{name} does not match its digest")));
        }
        Ok(bytes)
    }
}

/// Checks one file's size and digest, reading it in chunks.
fn check_file(dir: &Path, f: &FileRecord) -> Result<(), String> {
    if f.name.contains('/') || f.name.starts_with('.') {
        return Err(format!("the manifest names a file outside it: {}", f.name));
    }
    let mut file = fs::File::open(dir.join(&f.name)).map_err(|e| format!("{}: {e}", f.name))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", f.name))?
        .len();
    if len != f.bytes {
        return Err(format!(
            "{} is {len} bytes; the manifest says {}",
            f.name, f.bytes
        ));
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", f.name))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hex(hasher.finalize()) != f.blake3 {
        return Err(format!("{} does not match its digest", f.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            wasmvisor: "test".into(),
            vm: VmRecord {
                mem_bytes: 1 << 20,
                vcpus: 1,
                irqchip: false,
                serial: "native".into(),
                debug_exit: None,
                kernel_profile: None,
            },
            cpuid: Vec::new(),
            vcpus: vec![(0, "vcpu-0.bin".into())],
            vm_state: "vm.bin".into(),
            memory: "memory.bin".into(),
            devices: Vec::new(),
            policies: Vec::new(),
            files: Vec::new(),
        }
    }

    /// A directory under the temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("wasmvisor-snap-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Scratch(dir)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn written() -> Scratch {
        let dir = Scratch::new();
        let mut w = Writer::create(dir.path()).unwrap();
        w.add("vcpu-0.bin", b"regs").unwrap();
        w.add("memory.bin", &[0; 100]).unwrap();
        w.finish(manifest()).unwrap();
        dir
    }

    #[test]
    fn a_written_snapshot_opens() {
        let dir = written();
        let s = Snapshot::open(dir.path()).unwrap();
        assert_eq!(s.manifest.vcpus, manifest().vcpus);
        assert_eq!(s.read("vcpu-0.bin").unwrap(), b"regs");
        assert!(
            Writer::create(dir.path()).is_err(),
            "refuses a non-empty directory"
        );
    }

    #[test]
    fn damage_is_named_in_one_line() {
        let err = |dir: &Path| Snapshot::open(dir).unwrap_err().to_string();
        let dir = written();
        fs::write(dir.path().join("vcpu-0.bin"), b"regX").unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("damaged") && e.contains("vcpu-0.bin does not match"),
            "{e}"
        );
        assert!(!e.contains('\n'));

        let dir = written();
        fs::write(dir.path().join("memory.bin"), [0; 50]).unwrap();
        assert!(err(dir.path()).contains("memory.bin is 50 bytes"));

        let dir = written();
        let m = dir.path().join(MANIFEST);
        let text = fs::read_to_string(&m).unwrap();
        fs::write(
            &m,
            text.replace("\"mem_bytes\": 1048576", "\"mem_bytes\": 2097152"),
        )
        .unwrap();
        assert!(err(dir.path()).contains("does not match its digest"));
        fs::write(
            &m,
            text.replacen("wasmvisor-snapshot 1", "wasmvisor-snapshot 2", 1),
        )
        .unwrap();
        assert!(err(dir.path()).contains("format version 2; this wasmvisor reads version 1"));
        fs::write(&m, &text[..text.len() / 2]).unwrap();
        assert!(err(dir.path()).contains("damaged"));
        fs::write(&m, "hello").unwrap();
        assert!(err(dir.path()).contains("not a wasmvisor snapshot"));
        fs::remove_file(&m).unwrap();
        assert!(err(dir.path()).contains("not a wasmvisor snapshot"));
    }
}

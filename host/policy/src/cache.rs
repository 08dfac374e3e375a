//! Precompiled policies on disk, so that a load or a hot swap does not pay
//! the compile (tens of milliseconds) but only a deserialize (a fraction
//! of one).
//!
//! A precompiled artifact is native code: wasmtime deserializes it without
//! being able to tell whether it produced those bytes. So nothing in the
//! cache is trusted blindly:
//! - the directory must belong to the current user and be closed to
//!   others (mode 0700), and so must each entry (no group or world write);
//! - an entry is keyed by the BLAKE3 of the component's bytes and by the
//!   engine's compatibility hash (wasmtime version and every setting that
//!   changes code generation), and both are repeated inside its header;
//! - the header carries the BLAKE3 of the artifact, checked before
//!   wasmtime sees a byte of it;
//! - wasmtime then checks its own version and configuration header.
//!
//! An entry failing any check is rebuilt from the component and replaced;
//! the caller learns why through [`CacheOutcome::Rebuilt`].

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::Component;

use crate::engine::PolicyEngine;
use crate::error::{one_line, PolicyError};

/// First bytes of every entry; the digit is the header layout version.
const MAGIC: &[u8; 8] = b"WVPCACH1";
/// Magic, source hash, engine key, artifact hash.
const HEADER_LEN: usize = 8 + 32 + 8 + 32;

/// How a component was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache in use: compiled from the component.
    Off,
    /// Deserialized from a valid entry.
    Hit,
    /// No entry yet: compiled, and the entry written.
    Miss,
    /// An entry existed but was not trusted (the reason); compiled and
    /// replaced.
    Rebuilt(String),
}

impl CacheOutcome {
    /// One word for replies and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CacheOutcome::Off => "off",
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Rebuilt(_) => "rebuilt",
        }
    }
}

/// A directory of precompiled components.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

impl ComponentCache {
    /// Where the cache lives by default: `$WASMVISOR_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/wasmvisor/policies`, else
    /// `~/.cache/wasmvisor/policies`. A folder of its own: the
    /// `wasmvisor` folder above it also holds downloads (kernels,
    /// toolchains) made with the usual mode 0755, which the cache's own
    /// 0700 rule must not trip over.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("WASMVISOR_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        let base = match std::env::var_os("XDG_CACHE_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
        };
        Some(base.join("wasmvisor").join("policies"))
    }

    /// Opens (creating with mode 0700) the cache at `dir`. Refuses a
    /// directory another user owns or others may write to: its entries
    /// would be code anyone could have planted.
    pub fn open(dir: impl Into<PathBuf>) -> Result<ComponentCache, PolicyError> {
        let dir = dir.into();
        let err = |reason: String| PolicyError::Cache {
            path: dir.display().to_string(),
            reason,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| err(e.to_string()))?;
        let meta = fs::metadata(&dir).map_err(|e| err(e.to_string()))?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(err(format!(
                "owned by uid {}, not by this user (uid {me})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "mode {:o} lets other users in; it must be 0700",
                meta.mode() & 0o777
            )));
        }
        Ok(ComponentCache { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry that would hold `source` compiled by `engine`.
    pub fn entry_path(&self, engine: &PolicyEngine, source: &[u8]) -> PathBuf {
        self.path_for(engine, &digest(source))
    }

    fn path_for(&self, engine: &PolicyEngine, source_digest: &[u8; 32]) -> PathBuf {
        let key = engine_key(engine);
        self.dir
            .join(format!("{}-{key:016x}.cwasm", hex(source_digest)))
    }

    /// The component for `source`, from its entry if the entry checks
    /// out, else compiled and (re)written.
    pub(crate) fn component(
        &self,
        engine: &PolicyEngine,
        name: &str,
        source: &[u8],
    ) -> Result<(Component, CacheOutcome), PolicyError> {
        let source_digest = digest(source);
        let path = self.path_for(engine, &source_digest);
        let outcome = match self.read_entry(engine, &path, &source_digest) {
            Ok(component) => return Ok((component, CacheOutcome::Hit)),
            Err(Untrusted::Missing) => CacheOutcome::Miss,
            Err(Untrusted::Because(reason)) => CacheOutcome::Rebuilt(reason),
        };
        let (component, artifact) = compile(engine, name, source)?;
        // The component is good whether or not the entry can be written
        // (a full disk, a read-only cache): the next load compiles again.
        let _ = self.write_entry(engine, &path, &source_digest, &artifact);
        Ok((component, outcome))
    }

    /// Compiles `source` into its entry (replacing any), returning the
    /// entry's path. `name` names the component in errors.
    pub fn precompile(
        &self,
        engine: &PolicyEngine,
        name: &str,
        source: &[u8],
    ) -> Result<PathBuf, PolicyError> {
        let source_digest = digest(source);
        let path = self.path_for(engine, &source_digest);
        let (_, artifact) = compile(engine, name, source)?;
        self.write_entry(engine, &path, &source_digest, &artifact)?;
        Ok(path)
    }

    fn read_entry(
        &self,
        engine: &PolicyEngine,
        path: &Path,
        source_digest: &[u8; 32],
    ) -> Result<Component, Untrusted> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Untrusted::Missing),
            Err(e) => return Err(Untrusted::Because(e.to_string())),
        };
        let me = rustix::process::geteuid().as_raw();
        if !meta.file_type().is_file() {
            return Err(Untrusted::Because("the entry is not a regular file".into()));
        }
        if meta.uid() != me {
            return Err(Untrusted::Because(format!(
                "the entry is owned by uid {}, not this user",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(Untrusted::Because(format!(
                "the entry is writable by others (mode {:o})",
                meta.mode() & 0o777
            )));
        }
        let bytes = fs::read(path).map_err(|e| Untrusted::Because(e.to_string()))?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(Untrusted::Because(
                "the entry has no wasmvisor cache header".into(),
            ));
        }
        if bytes[8..40] != source_digest[..] {
            return Err(Untrusted::Because(
                "the entry was built from other component bytes".into(),
            ));
        }
        if bytes[40..48] != engine_key(engine).to_le_bytes() {
            return Err(Untrusted::Because(
                "the entry was built by another engine configuration".into(),
            ));
        }
        let artifact = &bytes[HEADER_LEN..];
        if bytes[48..80] != digest(artifact) {
            return Err(Untrusted::Because(
                "the entry's checksum does not match its contents".into(),
            ));
        }
        // SAFETY: `artifact` is what `Engine::precompile_component` wrote
        // for these exact source bytes and this engine configuration: the
        // entry sits in a 0700 directory owned by this user, is not
        // writable by others, and its BLAKE3 matches the header written
        // with it. wasmtime checks its own version/config header as well.
        let component = unsafe { Component::deserialize(engine.wasmtime(), artifact) }
            .map_err(|e| Untrusted::Because(format!("wasmtime refused it: {}", one_line(&e))))?;
        Ok(component)
    }

    fn write_entry(
        &self,
        engine: &PolicyEngine,
        path: &Path,
        source_digest: &[u8; 32],
        artifact: &[u8],
    ) -> Result<(), PolicyError> {
        let err = |e: std::io::Error| PolicyError::Cache {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut bytes = Vec::with_capacity(HEADER_LEN + artifact.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(source_digest);
        bytes.extend_from_slice(&engine_key(engine).to_le_bytes());
        bytes.extend_from_slice(&digest(artifact));
        bytes.extend_from_slice(artifact);
        // Written beside the entry and renamed over it, so a reader never
        // sees half an entry.
        // Unique per writer: two loads of the same policy, in this process
        // or another, may write the same entry at once.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp{}-{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })
    }
}

/// Why an entry was not used.
enum Untrusted {
    Missing,
    Because(String),
}

/// Compiles a component and serializes it in one go (the serialized form
/// is what the cache stores; the component is used right away).
fn compile(
    engine: &PolicyEngine,
    name: &str,
    source: &[u8],
) -> Result<(Component, Vec<u8>), PolicyError> {
    let component =
        Component::new(engine.wasmtime(), source).map_err(|e| PolicyError::Compile {
            name: name.into(),
            reason: one_line(&e),
        })?;
    let artifact = component.serialize().map_err(|e| PolicyError::Compile {
        name: name.into(),
        reason: one_line(&e),
    })?;
    Ok((component, artifact))
}

/// The engine's compatibility hash folded to 64 bits. Any change of
/// wasmtime version or code-generation setting changes it; a collision
/// only means wasmtime's own header check gets the last word.
fn engine_key(engine: &PolicyEngine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine
        .wasmtime()
        .precompile_compatibility_hash()
        .hash(&mut h);
    h.finish()
}

/// BLAKE3: a cryptographic hash several times faster than SHA-256 here,
/// which matters because a swap hashes the component and the artifact.
fn digest(bytes: &[u8]) -> [u8; 32] {
    blake3::hash(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeadlineMechanism;

    /// The smallest component wasmtime compiles.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

    fn tempdir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmvisor-cache-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn miss_then_hit() {
        let dir = tempdir("hit");
        let cache = ComponentCache::open(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().mode() & 0o777,
            0o700,
            "created closed"
        );
        let engine = PolicyEngine::new().unwrap();
        let (_, first) = cache.component(&engine, "e.wasm", EMPTY).unwrap();
        assert_eq!(first, CacheOutcome::Miss);
        let (_, second) = cache.component(&engine, "e.wasm", EMPTY).unwrap();
        assert_eq!(second, CacheOutcome::Hit);
        let entry = cache.entry_path(&engine, EMPTY);
        assert_eq!(fs::metadata(&entry).unwrap().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn rebuilt_because(dir: &Path, engine: &PolicyEngine) -> String {
        let cache = ComponentCache::open(dir).unwrap();
        match cache.component(engine, "e.wasm", EMPTY).unwrap().1 {
            CacheOutcome::Rebuilt(why) => why,
            other => panic!("expected a rebuild, got {other:?}"),
        }
    }

    #[test]
    fn tampered_entries_are_rebuilt_not_trusted() {
        let dir = tempdir("tamper");
        let engine = PolicyEngine::new().unwrap();
        let cache = ComponentCache::open(&dir).unwrap();
        let entry = cache.precompile(&engine, "e.wasm", EMPTY).unwrap();

        // A flipped byte in the artifact.
        let mut bytes = fs::read(&entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&entry, &bytes).unwrap();
        assert!(rebuilt_because(&dir, &engine).contains("checksum"));
        // The rebuild put a good entry back.
        assert_eq!(
            cache.component(&engine, "e.wasm", EMPTY).unwrap().1,
            CacheOutcome::Hit
        );

        // Not a cache entry at all.
        fs::write(&entry, b"garbage").unwrap();
        assert!(rebuilt_because(&dir, &engine).contains("header"));

        // A good entry made writable by others.
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(rebuilt_because(&dir, &engine).contains("writable by others"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_for_another_engine_is_rebuilt() {
        let dir = tempdir("foreign");
        let epoch = PolicyEngine::new().unwrap();
        let fuel =
            PolicyEngine::with_deadline_mechanism(DeadlineMechanism::Fuel { budget: 1 }).unwrap();
        let cache = ComponentCache::open(&dir).unwrap();
        assert_ne!(
            cache.entry_path(&epoch, EMPTY),
            cache.entry_path(&fuel, EMPTY),
            "engine settings are part of the key"
        );
        // Plant the epoch engine's entry where the fuel engine looks.
        let good = cache.precompile(&epoch, "e.wasm", EMPTY).unwrap();
        fs::copy(&good, cache.entry_path(&fuel, EMPTY)).unwrap();
        assert!(rebuilt_because(&dir, &fuel).contains("another engine"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_entry_all_succeed() {
        let dir = tempdir("race");
        let cache = ComponentCache::open(&dir).unwrap();
        let engine = PolicyEngine::new().unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| cache.precompile(&engine, "e.wasm", EMPTY).unwrap());
            }
        });
        assert_eq!(
            cache.component(&engine, "e.wasm", EMPTY).unwrap().1,
            CacheOutcome::Hit
        );
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "only the entry remains");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_open_directory_is_refused() {
        let dir = tempdir("open");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ComponentCache::open(&dir).unwrap_err().to_string();
        assert!(err.contains("must be 0700"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

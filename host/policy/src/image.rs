//! A loaded policy: a component file read, checked against the contract,
//! compiled, and linked once, ready to be instantiated per vCPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, Instance, InstancePre};
use wasmvisor_exit::VcpuAccess;

use crate::bindings::exports::wasmvisor::policy::{handler, quick_handler};
use crate::cache::CacheOutcome;
use crate::ctx::{Ctx, InstanceContext};
use crate::engine::PolicyEngine;
use crate::error::{one_line, PolicyError};
use crate::instance::PolicyInstance;
use crate::limits::Limits;
use crate::wasi::{self, WasiGrants};

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: u64 = 64 << 20;

/// The interface every policy must export.
pub const HANDLER: &str = "wasmvisor:policy/handler@0.1.0";

/// The list-free answer a policy may export as well (`wit/policy.wit`).
pub const QUICK_HANDLER: &str = "wasmvisor:policy/quick-handler@0.1.0";

/// The wasmvisor interfaces the host provides to policies.
const PROVIDED: [&str; 2] = [
    "wasmvisor:policy/host@0.1.0",
    "wasmvisor:policy/types@0.1.0",
];

/// A compiled and linked policy. Cheap to clone, `Send + Sync`: share one
/// image between the vCPU threads and instantiate it once per vCPU.
#[derive(Clone)]
pub struct PolicyImage {
    name: Arc<str>,
    pre: Linked,
    wasi: WasiGrants,
    /// Keeps the epoch ticker alive as long as an image or instance is.
    engine: PolicyEngine,
    /// Whether the compiled code came from the engine's cache.
    cache: CacheOutcome,
}

impl PolicyImage {
    /// Reads and compiles the component at `path`; its file name names it
    /// in errors.
    pub fn load(engine: &PolicyEngine, path: &Path) -> Result<PolicyImage, PolicyError> {
        Self::load_with(engine, path, WasiGrants::default())
    }

    /// Like [`PolicyImage::load`], granting the policy `wasi`.
    pub fn load_with(
        engine: &PolicyEngine,
        path: &Path,
        wasi: WasiGrants,
    ) -> Result<PolicyImage, PolicyError> {
        let bytes = read_policy(path)?;
        Self::from_bytes_with(engine, &file_name(path), &bytes, wasi)
    }

    /// Compiles a component held in memory; `name` names it in errors.
    pub fn from_bytes(
        engine: &PolicyEngine,
        name: &str,
        bytes: &[u8],
    ) -> Result<PolicyImage, PolicyError> {
        Self::from_bytes_with(engine, name, bytes, WasiGrants::default())
    }

    /// Like [`PolicyImage::from_bytes`], granting the policy `wasi`.
    pub fn from_bytes_with(
        engine: &PolicyEngine,
        name: &str,
        bytes: &[u8],
        wasi: WasiGrants,
    ) -> Result<PolicyImage, PolicyError> {
        sniff(name, bytes)?;
        let (component, cache) = match engine.cache() {
            Some(c) => c.component(engine, name, bytes)?,
            None => {
                let component =
                    Component::new(engine.wasmtime(), bytes).map_err(|e| PolicyError::Compile {
                        name: name.into(),
                        reason: one_line(&e),
                    })?;
                (component, CacheOutcome::Off)
            }
        };
        check_world(engine, name, &component)?;
        let pre = link(engine, name, &component, wasi)?;
        Ok(PolicyImage {
            name: name.into(),
            pre,
            wasi,
            engine: engine.clone(),
            cache,
        })
    }

    /// Checks and precompiles the component at `path` into the engine's
    /// cache, returning the entry's path; later loads of the same bytes by
    /// an engine of the same configuration skip the compile.
    pub fn precompile(engine: &PolicyEngine, path: &Path) -> Result<PathBuf, PolicyError> {
        let Some(cache) = engine.cache() else {
            return Err(PolicyError::Cache {
                path: path.display().to_string(),
                reason: "no cache directory is configured".into(),
            });
        };
        let bytes = read_policy(path)?;
        let name = file_name(path);
        // Through the normal load: a component that would be refused at
        // load time is not worth caching.
        Self::from_bytes(engine, &name, &bytes)?;
        cache.precompile(engine, &name, &bytes)
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.cache
    }

    /// The file name the image was loaded from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates an instance for one vCPU. Call [`PolicyInstance::init`]
    /// before routing exits to it.
    pub fn instantiate<V: VcpuAccess + Send + 'static>(
        &self,
        ctx: InstanceContext,
        limits: &Limits,
    ) -> Result<PolicyInstance<V>, PolicyError> {
        PolicyInstance::new(self.clone(), ctx, *limits)
    }

    /// The linked, pre-instantiated component.
    pub(crate) fn pre(&self) -> &Linked {
        &self.pre
    }

    /// Whether the policy exports `quick-handler`, the list-free answer.
    pub fn answers_quick(&self) -> bool {
        self.pre.quick.is_some()
    }

    /// The WASI authority granted to the policy.
    pub fn wasi(&self) -> WasiGrants {
        self.wasi
    }

    /// The engine the image was compiled by.
    pub(crate) fn engine(&self) -> &PolicyEngine {
        &self.engine
    }
}

impl std::fmt::Debug for PolicyImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyImage")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The file name a policy is known by in errors.
fn file_name(path: &Path) -> String {
    match path.file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => path.display().to_string(),
    }
}

/// Reads a policy file, refusing oversized ones before reading them.
fn read_policy(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let read_error = |error| PolicyError::Read {
        path: path.display().to_string(),
        error,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            name: file_name(path),
            size,
            limit: MAX_POLICY_BYTES,
        });
    }
    std::fs::read(path).map_err(read_error)
}

/// Tells non-Wasm files, core modules and oversized files apart before
/// handing the bytes to the compiler, whose errors are less direct.
fn sniff(name: &str, bytes: &[u8]) -> Result<(), PolicyError> {
    let size = bytes.len() as u64;
    if size > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            name: name.into(),
            size,
            limit: MAX_POLICY_BYTES,
        });
    }
    if bytes.len() < 8 || !bytes.starts_with(b"\0asm") {
        return Err(PolicyError::NotWasm { name: name.into() });
    }
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    if bytes[6..8] == [0, 0] {
        return Err(PolicyError::CoreModule { name: name.into() });
    }
    Ok(())
}

/// Where an import of a component would come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportSource {
    /// The host interface (`wasmvisor:policy/...@0.1.0`).
    Host,
    /// WASI preview 2 (0.2.x), over the locked-down context.
    Wasi,
    /// Nothing: the policy cannot be linked.
    Missing,
}

/// A component's exports and imports, for `wasmvisor policy check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survey {
    /// Size of the file in bytes.
    pub bytes: usize,
    pub exports: Vec<String>,
    pub imports: Vec<(String, ImportSource)>,
}

/// Compiles the component at `path` and lists what it exports and
/// imports, without checking it against the world.
pub fn survey(engine: &PolicyEngine, path: &Path) -> Result<Survey, PolicyError> {
    let bytes = read_policy(path)?;
    let name = file_name(path);
    sniff(&name, &bytes)?;
    let component =
        Component::new(engine.wasmtime(), &bytes).map_err(|e| PolicyError::Compile {
            name: name.clone(),
            reason: one_line(&e),
        })?;
    let ty = component.component_type();
    let wasmtime = engine.wasmtime();
    let exports = ty.exports(wasmtime).map(|(n, _)| n.to_string()).collect();
    let imports = ty
        .imports(wasmtime)
        .map(|(n, _)| {
            let source = if PROVIDED.contains(&n) {
                ImportSource::Host
            } else if wasi::provides(n) {
                ImportSource::Wasi
            } else {
                ImportSource::Missing
            };
            (n.to_string(), source)
        })
        .collect();
    Ok(Survey {
        bytes: bytes.len(),
        exports,
        imports,
    })
}

/// Checks the component's exports, then its imports, against world
/// `policy`: a component of another world is named as such first.
fn check_world(
    engine: &PolicyEngine,
    name: &str,
    component: &Component,
) -> Result<(), PolicyError> {
    let ty = component.component_type();
    let wasmtime = engine.wasmtime();
    if !ty.exports(wasmtime).any(|(export, _)| export == HANDLER) {
        return Err(PolicyError::WrongWorld { name: name.into() });
    }
    check_imports(engine, name, component)
}

/// Refuses imports other than the host's interfaces and WASI preview 2.
fn check_imports(
    engine: &PolicyEngine,
    name: &str,
    component: &Component,
) -> Result<(), PolicyError> {
    let ty = component.component_type();
    for (import, _) in ty.imports(engine.wasmtime()) {
        if !PROVIDED.contains(&import) && !wasi::provides(import) {
            return Err(PolicyError::UnknownImport {
                name: name.into(),
                import: import.into(),
            });
        }
    }
    Ok(())
}

/// A component linked against the host and pre-instantiated, with its
/// exports resolved: `handler` always, `quick-handler` when it has one.
#[derive(Clone)]
pub(crate) struct Linked {
    pre: InstancePre<Ctx>,
    handler: handler::GuestIndices,
    quick: Option<quick_handler::GuestIndices>,
}

/// The exports of one instance, as [`Linked::instantiate`] returns them.
pub(crate) struct Exports {
    pub handler: handler::Guest,
    pub quick: Option<quick_handler::Guest>,
}

impl Linked {
    /// Instantiates the component in `store` and loads its exports.
    pub(crate) fn instantiate(
        &self,
        store: &mut wasmtime::Store<Ctx>,
    ) -> wasmtime::Result<Exports> {
        let instance: Instance = self.pre.instantiate(&mut *store)?;
        let handler = self.handler.load(&mut *store, &instance)?;
        let quick = match &self.quick {
            Some(q) => Some(q.load(&mut *store, &instance)?),
            None => None,
        };
        Ok(Exports { handler, quick })
    }
}

/// Links the host interfaces and WASI, pre-instantiates, and resolves the
/// exports. A `quick-handler` export of the wrong shape is refused like a
/// wrong `handler`, not ignored: its author meant it to be called.
fn link(
    engine: &PolicyEngine,
    name: &str,
    component: &Component,
    wasi: WasiGrants,
) -> Result<Linked, PolicyError> {
    let link_error = |e: wasmtime::Error| PolicyError::Link {
        name: name.into(),
        reason: one_line(&e),
    };
    let wrong_types = |e: wasmtime::Error| PolicyError::WrongTypes {
        name: name.into(),
        reason: one_line(&e),
    };
    let ty = component.component_type();
    let interfaces = wasi::interfaces(ty.imports(engine.wasmtime()).map(|(name, _)| name));
    let linker = engine.linker(wasi, interfaces).map_err(link_error)?;
    let pre = linker.instantiate_pre(component).map_err(link_error)?;
    let handler = handler::GuestIndices::new(&pre).map_err(wrong_types)?;
    let exports_quick = ty
        .exports(engine.wasmtime())
        .any(|(export, _)| export == QUICK_HANDLER);
    let quick = if exports_quick {
        Some(quick_handler::GuestIndices::new(&pre).map_err(wrong_types)?)
    } else {
        None
    };
    Ok(Linked {
        pre,
        handler,
        quick,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> PolicyEngine {
        PolicyEngine::new().expect("engine")
    }

    fn load_err(bytes: &[u8]) -> String {
        PolicyImage::from_bytes(&engine(), "p.wasm", bytes)
            .expect_err("must not load")
            .to_string()
    }

    #[test]
    fn text_is_not_wasm() {
        assert_eq!(
            load_err(b"(component)"),
            "policy p.wasm is not a WebAssembly file"
        );
        assert_eq!(load_err(b""), "policy p.wasm is not a WebAssembly file");
        assert_eq!(
            load_err(b"\0asm"),
            "policy p.wasm is not a WebAssembly file"
        );
    }

    #[test]
    fn core_modules_are_named_as_such() {
        assert_eq!(
            load_err(b"\0asm\x01\0\0\0"),
            "policy p.wasm is a core Wasm module, not a component; \
             build it with a component target such as wasm32-wasip2"
        );
    }

    #[test]
    fn a_broken_component_does_not_compile() {
        let err = load_err(b"\0asm\x0d\0\x01\0\x99");
        assert!(err.starts_with("policy p.wasm does not compile: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn an_empty_component_lacks_the_handler() {
        assert_eq!(
            load_err(b"\0asm\x0d\0\x01\0"),
            "policy p.wasm does not export wasmvisor:policy/handler@0.1.0"
        );
    }

    #[test]
    fn foreign_imports_are_named() {
        // A component whose only content is an import of instance `x:y/z`
        // (an instance type with no exports).
        let bytes = b"\0asm\x0d\0\x01\0\
                      \x07\x03\x01\x42\x00\
                      \x0a\x0a\x01\x00\x05x:y/z\x05\x00";
        let engine = engine();
        let component = Component::new(engine.wasmtime(), bytes).expect("compiles");
        let err = check_imports(&engine, "p.wasm", &component).unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy p.wasm imports `x:y/z`, which wasmvisor does not provide"
        );
    }

    #[test]
    fn wasi_outside_preview_2_is_not_provided() {
        // As above, importing `wasi:http/types@0.2.0`.
        let bytes = b"\0asm\x0d\0\x01\0\
                      \x07\x03\x01\x42\x00\
                      \x0a\x1a\x01\x00\x15wasi:http/types@0.2.0\x05\x00";
        let engine = engine();
        let component = Component::new(engine.wasmtime(), bytes).expect("compiles");
        let err = check_imports(&engine, "p.wasm", &component).unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy p.wasm imports `wasi:http/types@0.2.0`, which wasmvisor does not provide"
        );
    }

    #[test]
    fn oversize_bytes_are_refused_before_compiling() {
        let mut bytes = vec![0u8; (MAX_POLICY_BYTES + 1) as usize];
        bytes[..8].copy_from_slice(b"\0asm\x0d\0\x01\0");
        let err = load_err(&bytes);
        assert_eq!(
            err,
            format!(
                "policy p.wasm is {} bytes, more than the {}-byte limit",
                MAX_POLICY_BYTES + 1,
                MAX_POLICY_BYTES
            )
        );
    }

    #[test]
    fn missing_files_name_the_path() {
        let err = PolicyImage::load(&engine(), Path::new("/nonexistent/p.wasm"))
            .expect_err("must not load")
            .to_string();
        assert!(
            err.starts_with("cannot read policy /nonexistent/p.wasm: "),
            "{err}"
        );
    }
}

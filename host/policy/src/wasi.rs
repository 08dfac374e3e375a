//! The locked-down WASI a wasm32-wasip2 policy's standard library links
//! against.
//!
//! wasmtime-wasi's preview-2 interfaces are linked over an empty context:
//! no arguments, environment, preopened directories or inherited stdio
//! (standard streams are empty), TCP, UDP and name lookup off, every socket
//! address refused. The clocks are linked as functions that trap: a policy
//! gets no time source, and cannot sleep or poll a timer, which would block
//! its vCPU thread where the epoch deadline cannot interrupt it.
//!
//! The operator may grant a policy more, per policy ([`WasiGrants`]):
//! the clocks, and standard output and error (both go to the host's
//! standard error, never to the guest console).
//!
//! The interfaces are linked at wasmtime-wasi's own version (0.2.12), and
//! wasmtime matches a policy's 0.2.x imports to them by semver. That is why
//! the unimplemented clocks are shadowed by name rather than stubbed with
//! `Linker::define_unknown_imports_as_traps`, which defines the exact
//! imported version (say 0.2.6) and so hides the real interfaces too.

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::ctx::Ctx;

/// WASI packages a policy may import (at version 0.2.x).
pub(crate) const PACKAGES: [&str; 6] = [
    "wasi:cli/",
    "wasi:io/",
    "wasi:random/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// The clock functions, shadowed by traps.
const CLOCKS: [(&str, &[&str]); 2] = [
    (
        "wasi:clocks/monotonic-clock@0.2.12",
        &[
            "now",
            "resolution",
            "subscribe-instant",
            "subscribe-duration",
        ],
    ),
    ("wasi:clocks/wall-clock@0.2.12", &["now", "resolution"]),
];

/// True if `import` names a WASI interface the linker provides.
pub(crate) fn provides(import: &str) -> bool {
    let Some((interface, version)) = import.split_once('@') else {
        return false;
    };
    PACKAGES.iter().any(|p| interface.starts_with(p)) && version.starts_with("0.2.")
}

/// WASI authority the operator granted one policy. Nothing by default:
/// no filesystem, sockets, environment or arguments are ever granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WasiGrants {
    /// The monotonic and wall clocks (and so sleeping and timers).
    pub clocks: bool,
    /// Standard output and error, both written to the host's stderr.
    pub stdio: bool,
}

/// The context each store gets: empty, plus what was granted.
pub(crate) fn ctx(grants: WasiGrants) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if grants.stdio {
        b.stdout(wasmtime_wasi::cli::stderr())
            .stderr(wasmtime_wasi::cli::stderr());
    }
    b.build()
}

/// Adds WASI preview 2 to `linker`, with the clocks trapping unless
/// granted.
pub(crate) fn add_to_linker(linker: &mut Linker<Ctx>, grants: WasiGrants) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    if grants.clocks {
        return Ok(());
    }
    linker.allow_shadowing(true);
    for (interface, funcs) in CLOCKS {
        let mut instance = linker.instance(interface)?;
        for func in funcs {
            let message = format!("{interface}#{func} is not available to policies (no clocks)");
            instance.func_new(func, move |_, _, _, _| {
                Err(wasmtime::Error::msg(message.clone()))
            })?;
        }
    }
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wasi_preview_2_packages_are_provided() {
        assert!(provides("wasi:cli/stdout@0.2.6"));
        assert!(provides("wasi:io/streams@0.2.0"));
        assert!(provides("wasi:clocks/monotonic-clock@0.2.12"));
        assert!(!provides("wasi:http/types@0.2.6"));
        assert!(!provides("wasi:cli/stdout@0.3.0"));
        assert!(!provides("wasi:cli/stdout"));
        assert!(!provides("acme:cli/stdout@0.2.6"));
    }
}

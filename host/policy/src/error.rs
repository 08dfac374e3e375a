//! Errors of loading, starting and calling policies.
//!
//! Every message is one line that stands on its own: the cause is part of
//! the text rather than a separate `source()`, so printing an error with
//! `{}` says everything once.

use thiserror::Error;
use wasmvisor_exit::VcpuAccessError;

/// Loading, starting or calling a policy failed.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The wasmtime engine could not be configured.
    #[error("cannot create the Wasm engine: {0}")]
    Engine(String),
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
    /// The events file could not be created.
    #[error("cannot create events file {path}: {error}")]
    EventsFile { path: String, error: std::io::Error },
    /// The precompiled-component cache could not be opened or written.
    #[error("policy cache {path}: {reason}")]
    Cache { path: String, reason: String },
    /// The policy file could not be read.
    #[error("cannot read policy {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// The file is larger than any policy may be.
    #[error("policy {name} is {size} bytes, more than the {limit}-byte limit")]
    TooLarge { name: String, size: u64, limit: u64 },
    /// The file does not start with the Wasm magic number.
    #[error("policy {name} is not a WebAssembly file")]
    NotWasm { name: String },
    /// The file is a core module rather than a component.
    #[error(
        "policy {name} is a core Wasm module, not a component; \
         build it with a component target such as wasm32-wasip2"
    )]
    CoreModule { name: String },
    /// The component failed to validate or compile.
    #[error("policy {name} does not compile: {reason}")]
    Compile { name: String, reason: String },
    /// The component does not export the handler interface.
    #[error("policy {name} does not export {}", crate::image::HANDLER)]
    WrongWorld { name: String },
    /// The component exports the handler interface with other types.
    #[error(
        "policy {name} exports {} with types that do not match this host: {reason}",
        crate::image::HANDLER
    )]
    WrongTypes { name: String, reason: String },
    /// The component imports something the host does not offer.
    #[error("policy {name} imports `{import}`, which wasmvisor does not provide")]
    UnknownImport { name: String, import: String },
    /// The component's imports could not be resolved.
    #[error("policy {name} cannot be linked: {reason}")]
    Link { name: String, reason: String },
    /// Creating an instance failed (a trap in start-up code, a limit).
    #[error("policy {policy} failed to start: {error}")]
    Instantiate { policy: String, error: CallError },
    /// An export call trapped, timed out or hit a limit.
    #[error("policy {policy} failed in {export}: {error}")]
    Call {
        policy: String,
        export: &'static str,
        error: CallError,
    },
    /// `init` returned an error.
    #[error("policy {policy} rejected its configuration: {reason}")]
    InitRejected { policy: String, reason: String },
    /// `restore-state` returned an error.
    #[error("policy {policy} rejected the saved state: {reason}")]
    RestoreRejected { policy: String, reason: String },
}

/// One call into a policy failed. The instance has been rebuilt (and
/// re-initialised) by the time the caller sees this, unless the variant
/// says otherwise.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CallError {
    /// The policy trapped (a panic, an invalid operation, a forbidden
    /// host request).
    #[error("the policy trapped: {0}")]
    Trap(String),
    /// The policy ran past its deadline and was interrupted.
    #[error("the policy ran past its deadline")]
    Timeout,
    /// The policy tried to grow a memory or table past its limit.
    #[error(
        "the policy tried to grow its {what} to {requested} {unit}, past the limit of {limit}",
        unit = if *what == "memory" { "bytes" } else { "elements" }
    )]
    Limit {
        what: &'static str,
        requested: usize,
        limit: usize,
    },
    /// A host import failed in the vCPU backend: a host fault, not the
    /// policy's.
    #[error("a host import failed: {0}")]
    Vcpu(VcpuAccessError),
    /// The instance could not be rebuilt after an earlier failure; every
    /// call fails until a rebuild succeeds (one is tried per call).
    #[error("the policy is unavailable: {0}")]
    Unavailable(String),
}

/// The readable part of a wasmtime error, on one line: the trap or host
/// message without the Wasm backtrace wasmtime attaches as context.
pub(crate) fn one_line(error: &wasmtime::Error) -> String {
    let text = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    flatten(&text)
}

/// Joins the lines of `text` with "; ".
pub(crate) fn flatten(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_joins_lines() {
        assert_eq!(flatten("a\n  b\n\nc  "), "a; b; c");
        assert_eq!(flatten("one"), "one");
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            PolicyError::CoreModule {
                name: "p.wasm".into(),
            },
            PolicyError::WrongWorld {
                name: "p.wasm".into(),
            },
            PolicyError::Call {
                policy: "p".into(),
                export: "handle-exit",
                error: CallError::Timeout,
            },
        ];
        for e in errors {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert_eq!(
            PolicyError::WrongWorld {
                name: "p.wasm".into()
            }
            .to_string(),
            "policy p.wasm does not export wasmvisor:policy/handler@0.1.0"
        );
    }
}

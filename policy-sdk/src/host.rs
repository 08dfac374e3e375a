//! What the host offers a policy while it runs: the `host` imports of the
//! contract, plus one-word logging helpers.
//!
//! These calls only work inside the host; on any other target (unit tests
//! on the build machine) they panic.

pub use crate::bindings::wasmvisor::policy::host::*;

/// Logs `msg` at trace level.
pub fn trace(msg: &str) {
    log(LogLevel::Trace, msg);
}

/// Logs `msg` at debug level.
pub fn debug(msg: &str) {
    log(LogLevel::Debug, msg);
}

/// Logs `msg` at info level.
pub fn info(msg: &str) {
    log(LogLevel::Info, msg);
}

/// Logs `msg` at warn level.
pub fn warn(msg: &str) {
    log(LogLevel::Warn, msg);
}

/// Logs `msg` at error level.
pub fn error(msg: &str) {
    log(LogLevel::Error, msg);
}

//! What the host offers a policy while it runs: the `host` imports of the
//! contract, plus one-word logging helpers.
//!
//! In a `wasm32` build these are the component's imports, generated from
//! `wit/policy.wit`. On any other target (`cargo test` on the build
//! machine) the same functions act on the `testing::FakeHost` the test
//! installed, and panic if there is none; see the `testing` module.

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::wasmvisor::policy::host::*;

#[cfg(not(target_arch = "wasm32"))]
pub use crate::testing::imports::*;

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

//! An exit hook the embedding program can add: native Rust code that
//! sees every exit before the policies do. The benchmark suite (`bench/`)
//! uses it as the native baseline a Wasm policy is compared with (with
//! the same policies loaded, so KVM's MSR filter and the routes are the
//! same in both runs), and to timestamp its guest's phase markers.

use wasmvisor_exit::{Completion, ExitEvent};

/// Answers exits ahead of the routes: ahead of every policy, built-in
/// device and the default handler. It runs on the vCPU thread, on the hot
/// path, and must not block. Exits it answers count as built-in.
pub trait ExitHook: Send + Sync {
    /// Writes the answer into `completion` and returns `true`, or returns
    /// `false` to leave the exit to the routes.
    fn handle(&self, event: &ExitEvent, completion: &mut Completion) -> bool;
}

//! wasmvisor's Wasm host: the only crate that names wasmtime.
//!
//! A [`PolicyEngine`] compiles policy components into [`PolicyImage`]s,
//! checked against the WIT world `wasmvisor:policy/policy` and linked once.
//! Each vCPU gets its own [`PolicyInstance`] of every image, which calls the
//! policy's exports under a deadline and memory caps ([`Limits`]), serves
//! its host imports from an [`InstanceContext`] (guest RAM, grants, and the
//! VM-wide [`Shared`] console, log, events and counters), and converts
//! between the WIT types and `wasmvisor-exit`'s domain types.
//!
//! Per exit, [`PolicyInstance::handle_exit`] converts the event, lends the
//! vCPU to the store, arms the deadline and makes one component call; the
//! host allocates nothing on that path beyond the action list the
//! component ABI hands back.

mod bindings;
mod cache;
mod convert;
mod ctx;
mod engine;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod image;
mod imports;
mod instance;
mod kernel;
mod limits;
mod record;
mod replay;
mod sinks;
mod snapshot;
mod tape;
mod types;
mod wasi;

pub use cache::{CacheOutcome, ComponentCache};
pub use ctx::InstanceContext;
pub use engine::{DeadlineMechanism, PolicyEngine, TICK};
pub use error::{CallError, PolicyError};
pub use image::{
    survey, ImportSource, PolicyImage, Survey, HANDLER, MAX_POLICY_BYTES, QUICK_HANDLER,
};
pub use imports::{MAX_EVENT_BYTES, MAX_KEY_BYTES, MAX_LOG_BYTES, MAX_TRANSFER};
pub use instance::PolicyInstance;
pub use kernel::KernelProfile;
pub use limits::{Limits, MIN_DEADLINE_TICKS};
pub use record::{read_recording, Entry, Header, Outcome, Recorder, RecordingError};
pub use replay::{recorded_policies, replay, Difference, ReplayReport};
pub use sinks::{
    CaptureConsole, ConsoleSink, Shared, StderrConsole, StdoutConsole, EVENT_SCHEMA, MAX_COUNTERS,
};
pub use snapshot::{SnapshotAccess, SnapshotOp, SnapshotRefusal, SnapshotRequests};
pub use tape::ImportCall;
pub use types::{CpuidLeaf, PolicyInfo, Verdict};
pub use wasi::WasiGrants;

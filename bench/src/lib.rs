//! The pieces of the benchmark suite (`make bench`) that its tests use
//! too: the benchmark guest, in-process runs with a native handler,
//! process measurements, snapshot and reset runs, and statistics. The
//! binary (`src/main.rs`, with its own modules `opts`, `paths`, `sections`
//! and `targets`) puts them together and prints the results.

#![forbid(unsafe_code)]

pub mod bars;
pub mod dispatch;
pub mod guest;
pub mod procs;
pub mod snapshot;
pub mod stats;
pub mod swap;

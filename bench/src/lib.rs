//! The pieces of the benchmark suite (`make bench`) that its tests use
//! too: the benchmark guest, in-process runs with a native handler,
//! process measurements and statistics. The binary (`src/main.rs`) puts
//! them together and prints the results.

pub mod bars;
pub mod dispatch;
pub mod guest;
pub mod procs;
pub mod stats;
pub mod swap;

//! The sections of a run, in the order they print, each named as `--only`
//! names it.

pub mod bars;
pub mod dispatch;
pub mod filter;
pub mod memory;
pub mod snapshot;
pub mod startup;
pub mod swap;

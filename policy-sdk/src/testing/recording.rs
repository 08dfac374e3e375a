//! What a [`FakeHost`](super::FakeHost) writes down about the calls a
//! policy made, for the test to check.

use crate::{GpaRange, LogLevel, MsrRange, PortRange};

/// One `emit` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The vCPU whose instance emitted it.
    pub vcpu: u32,
    /// The event kind.
    pub kind: String,
    /// The payload, exactly as the policy passed it.
    pub json: String,
}

/// One `log` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The vCPU whose instance logged it.
    pub vcpu: u32,
    /// The level.
    pub level: LogLevel,
    /// The message, exactly as the policy passed it (the host would cut
    /// it at 4 KiB and escape control characters).
    pub msg: String,
}

/// One constant answer declared during `init` (`constant-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Constant {
    /// `constant-ports`.
    Ports(PortRange, u64),
    /// `constant-msrs`.
    Msrs(MsrRange, u64),
    /// `constant-mmio`.
    Mmio(GpaRange, u64),
}

/// One accepted `snapshot-baseline` or `snapshot-reset` call. The host
/// acts on it once the exit being handled is complete; the fake only
/// writes it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotCall {
    /// `snapshot-baseline`: take the baseline.
    Baseline,
    /// `snapshot-reset`: put the VM back to the baseline.
    Reset,
}

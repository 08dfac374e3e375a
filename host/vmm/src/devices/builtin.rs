//! Devices the VMM emulates natively, behind every policy: the UART
//! (`--serial native`, the default console), the keyboard controller's
//! reset line, the debug-exit port (`--device debug-exit`) and the PCI
//! segment (`--device`).

use std::ops::RangeInclusive;

use wasmvisor_exit::{Completion, ExitEvent, GpaRange};

use crate::outcome::VmOutcome;

/// Answers a port read with 0, as the ports of a device with nothing to
/// report do (the i8042 without a keyboard, the debug-exit port).
pub fn reads_zero(event: &ExitEvent, completion: &mut Completion) {
    if let wasmvisor_exit::ExitKind::Io(io) = event.kind {
        if io.direction == wasmvisor_exit::Direction::Read {
            completion.read = Some(0);
        }
    }
}

/// A built-in device: the port and MMIO ranges it claims, and how it
/// answers an access to them. Policies that subscribe to the same ranges
/// answer first; the device gets what they decline.
pub trait BuiltinDevice: Send + Sync {
    /// The port ranges and MMIO ranges it answers.
    fn claims(&self) -> (Vec<RangeInclusive<u16>>, Vec<GpaRange>);
    /// Answers one access in its ranges.
    fn handle(&self, event: &ExitEvent, completion: &mut Completion);
    /// Whether the access [`handle`](Self::handle) just answered ends the
    /// run, and how: a reset line, an exit port. Most devices never do.
    fn ends_run(&self, event: &ExitEvent) -> Option<VmOutcome> {
        let _ = event;
        None
    }
    /// Learns the MMIO ranges the loaded policies subscribe to (at start
    /// and after each hot swap, with the vCPUs held): a device that maps
    /// memory into the guest keeps those ranges trapped so the policies
    /// see them.
    fn set_policy_mmio(&self, ranges: &[GpaRange]) {
        let _ = ranges;
    }
    /// The device's state for a snapshot, under a name unique among the
    /// built-in devices; `None` for a device without state.
    fn save(&self) -> Option<(&'static str, Vec<u8>)> {
        None
    }
    /// Puts back what [`save`](Self::save) returned (the vCPUs are held).
    fn restore(&self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

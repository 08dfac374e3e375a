//! Devices the VMM emulates natively, behind every policy: the UART
//! (`--serial native`) and the PCI segment (`--device`).

use std::ops::RangeInclusive;

use wasmvisor_exit::{Completion, ExitEvent, GpaRange};

/// A built-in device: the port and MMIO ranges it claims, and how it
/// answers an access to them. Policies that subscribe to the same ranges
/// answer first; the device gets what they decline.
pub trait BuiltinDevice: Send + Sync {
    /// The port ranges and MMIO ranges it answers.
    fn claims(&self) -> (Vec<RangeInclusive<u16>>, Vec<GpaRange>);
    /// Answers one access in its ranges.
    fn handle(&self, event: &ExitEvent, completion: &mut Completion);
    /// Learns the MMIO ranges the loaded policies subscribe to (at start
    /// and after each hot swap, with the vCPUs held): a device that maps
    /// memory into the guest keeps those ranges trapped so the policies
    /// see them.
    fn set_policy_mmio(&self, ranges: &[GpaRange]) {
        let _ = ranges;
    }
}

//! Entry points for the fuzz targets in `fuzz/`: the generated WIT types
//! and the conversions between them and the domain types. Not part of the
//! supported API.

pub use crate::bindings::wasmvisor::policy::types as wit;

use crate::convert;
use crate::types::{CpuidLeaf, PolicyInfo, Verdict};

/// A policy's verdict as the host sees it.
pub fn verdict(v: wit::Verdict) -> Verdict {
    convert::verdict(v)
}

/// What `init` returned, as the host sees it.
pub fn subscriptions(s: wit::Subscriptions) -> wasmvisor_exit::Subscriptions {
    convert::subscriptions(s)
}

/// A policy's self-description.
pub fn policy_info(i: wit::PolicyInfo) -> PolicyInfo {
    convert::policy_info(i)
}

/// A domain exit as the record a policy receives.
pub fn exit_event(e: &wasmvisor_exit::ExitEvent) -> wit::ExitEvent {
    convert::exit_event(e)
}

/// A register name as the domain's.
pub fn reg(r: wit::Reg) -> wasmvisor_exit::Reg {
    convert::reg(r)
}

/// A CPUID leaf to and from its WIT record.
pub fn cpuid_round_trip(l: CpuidLeaf) -> CpuidLeaf {
    convert::cpuid_from_wit(convert::cpuid_to_wit(l))
}

/// A segment register name as the domain's.
pub fn segment_reg(s: wit::SegmentReg) -> wasmvisor_exit::SegmentReg {
    convert::segment_reg(s)
}

/// A segment to and from its WIT record.
pub fn segment_round_trip(s: wasmvisor_exit::Segment) -> wasmvisor_exit::Segment {
    convert::segment_from_wit(convert::segment_to_wit(s))
}

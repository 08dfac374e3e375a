//! What a policy asks to see and to do, in host terms.

use std::ops::RangeInclusive;

use crate::ProtectRequest;

/// A half-open guest-physical range `[base, base + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange {
    pub base: u64,
    pub len: u64,
}

impl GpaRange {
    /// Exclusive end, or `None` if the range wraps the address space.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.len)
    }

    /// True if `[gpa, gpa + size)` lies wholly inside this range.
    pub fn contains(&self, gpa: u64, size: u64) -> bool {
        match (self.end(), gpa.checked_add(size)) {
            (Some(end), Some(access_end)) => gpa >= self.base && access_end <= end,
            _ => false,
        }
    }

    /// True if the two ranges share at least one byte.
    pub fn overlaps(&self, other: &GpaRange) -> bool {
        let (Some(a_end), Some(b_end)) = (self.end(), other.end()) else {
            return false;
        };
        self.base < b_end && other.base < a_end
    }
}

/// Exit kinds not addressed by a port, GPA or MSR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSet {
    pub hlt: bool,
    pub shutdown: bool,
    pub debug: bool,
    pub mem_violation: bool,
}

/// Capabilities beyond answering exits; each must be granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub set_registers: bool,
    pub write_memory: bool,
    pub protect_memory: bool,
    pub debug: bool,
    pub stop_vm: bool,
}

impl Capabilities {
    /// Every capability.
    pub const ALL: Capabilities = Capabilities {
        set_registers: true,
        write_memory: true,
        protect_memory: true,
        debug: true,
        stop_vm: true,
    };

    /// The capabilities held in both sets.
    pub fn intersect(self, other: Capabilities) -> Capabilities {
        Capabilities {
            set_registers: self.set_registers && other.set_registers,
            write_memory: self.write_memory && other.write_memory,
            protect_memory: self.protect_memory && other.protect_memory,
            debug: self.debug && other.debug,
            stop_vm: self.stop_vm && other.stop_vm,
        }
    }

    /// Names of the capabilities held, for messages.
    pub fn names(self) -> Vec<&'static str> {
        let all = [
            (self.set_registers, "set-registers"),
            (self.write_memory, "write-memory"),
            (self.protect_memory, "protect-memory"),
            (self.debug, "debug"),
            (self.stop_vm, "stop-vm"),
        ];
        all.into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n)
            .collect()
    }
}

/// A policy's subscriptions, as returned by its `init`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    pub ports: Vec<RangeInclusive<u16>>,
    pub mmio: Vec<GpaRange>,
    pub msrs: Vec<RangeInclusive<u32>>,
    pub cpuid: Vec<u32>,
    pub events: EventSet,
    pub protect: Vec<ProtectRequest>,
    pub capabilities: Capabilities,
    /// Answers the host gives natively on the policy's behalf, declared
    /// through the host's `constant-*` imports during init.
    pub constants: Vec<crate::Constant>,
}

impl Subscriptions {
    /// Reasons this host cannot honour these subscriptions, one line each:
    /// malformed ranges, and protection stock KVM cannot provide.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self
            .protect
            .iter()
            .any(|p| p.mode == crate::Protection::NoExecute)
        {
            out.push(
                "asks for execute protection, which stock KVM cannot provide (no instruction-fetch exits)"
                    .into(),
            );
        }
        for r in &self.ports {
            if r.start() > r.end() {
                out.push(format!(
                    "has an empty port range {:#x}-{:#x}",
                    r.start(),
                    r.end()
                ));
            }
        }
        for r in &self.msrs {
            if r.start() > r.end() {
                out.push(format!(
                    "has an empty MSR range {:#x}-{:#x}",
                    r.start(),
                    r.end()
                ));
            }
        }
        for r in &self.mmio {
            if r.len == 0 || r.end().is_none() {
                out.push(format!(
                    "has an invalid MMIO range base {:#x} len {:#x}",
                    r.base, r.len
                ));
            }
        }
        out
    }
}

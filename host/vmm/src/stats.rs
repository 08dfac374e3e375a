//! Exit statistics: exits by kind, who answered them, time in policies.

use std::time::Duration;

use serde::Serialize;
use wasmvisor_exit::ExitKind;

/// Exit kinds in the order the summary prints them.
pub const KINDS: [&str; 7] = [
    "io",
    "mmio",
    "msr",
    "mem-violation",
    "debug",
    "hlt",
    "shutdown",
];

fn kind_index(kind: &ExitKind) -> usize {
    match kind {
        ExitKind::Io(_) => 0,
        ExitKind::Mmio(_) => 1,
        ExitKind::Msr(_) => 2,
        ExitKind::MemViolation(_) => 3,
        ExitKind::Debug(_) => 4,
        ExitKind::Hlt => 5,
        ExitKind::Shutdown { .. } => 6,
    }
}

/// Per-policy counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyStats {
    pub name: String,
    /// Exits this policy answered.
    pub handled: u64,
    /// Of those, exits the host answered from the policy's declared
    /// constants, without a call.
    pub constant: u64,
    /// Exits it was asked about and declined.
    pub declined: u64,
    /// Traps, timeouts and rejected actions.
    pub faults: u64,
    /// Wall time spent inside its calls.
    pub time: Duration,
    /// The longest single call, in nanoseconds.
    pub max_call_ns: u64,
}

/// Counters of one passthrough device, for the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceStats {
    /// As given to `--device`.
    pub device: String,
    /// Interrupt routes made through KVM irqfds (MSI vectors and INTx).
    pub irq_routes: u64,
    /// Interrupts the VMM delivered itself instead.
    pub irqs_by_vmm: u64,
    /// Bytes of BARs mapped into the guest as memslots, at most at once.
    pub mapped_bar_bytes: u64,
    /// Bytes of guest RAM the device can reach by DMA.
    pub dma_mapped_bytes: u64,
}

/// Counters for one vCPU, or merged for the VM.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub exits: [u64; 7],
    pub policies: Vec<PolicyStats>,
    pub builtin: u64,
    pub default: u64,
    /// Passthrough devices (VM-wide; empty on per-vCPU counters).
    pub devices: Vec<DeviceStats>,
    /// Wall time from the first vCPU start to the last vCPU stop.
    pub wall: Duration,
    /// Policy calls were timed on one exit in this many (0 or 1: every
    /// call, `--stats`); their `time` is then an estimate.
    pub timed_every: u32,
    /// Observer policies (VM-wide; empty on per-vCPU counters).
    pub observers: Vec<crate::policies::observer::ObserverStats>,
}

impl Stats {
    /// Empty counters for these policies.
    pub fn new(policy_names: &[String]) -> Stats {
        Stats {
            policies: policy_names
                .iter()
                .map(|n| PolicyStats {
                    name: n.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    pub(crate) fn count_exit(&mut self, kind: &ExitKind) {
        self.exits[kind_index(kind)] += 1;
    }

    /// Adds another vCPU's counters.
    pub fn merge(&mut self, other: &Stats) {
        self.timed_every = self.timed_every.max(other.timed_every);
        for (a, b) in self.exits.iter_mut().zip(other.exits) {
            *a += b;
        }
        // A policy loaded while the VM ran has a row only on the vCPUs
        // that saw the load.
        for extra in other.policies.iter().skip(self.policies.len()) {
            self.policies.push(PolicyStats {
                name: extra.name.clone(),
                ..Default::default()
            });
        }
        for (a, b) in self.policies.iter_mut().zip(&other.policies) {
            a.handled += b.handled;
            a.constant += b.constant;
            a.declined += b.declined;
            a.faults += b.faults;
            a.time += b.time;
            a.max_call_ns = a.max_call_ns.max(b.max_call_ns);
        }
        self.builtin += other.builtin;
        self.default += other.default;
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// The short summary printed after every run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let kinds: Vec<String> = KINDS
            .iter()
            .zip(self.exits)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let secs = self.wall.as_secs_f64();
        let rate = if secs > 0.0 {
            self.total() as f64 / secs
        } else {
            0.0
        };
        out.push_str(&format!(
            "exits: {} in {:.3} s ({:.0}/s): {}\n",
            self.total(),
            secs,
            rate,
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            }
        ));
        for p in &self.policies {
            let calls = p.handled + p.declined + p.faults - p.constant;
            let avg = if calls > 0 {
                p.time.as_nanos() as f64 / calls as f64
            } else {
                0.0
            };
            let constant = if p.constant > 0 {
                format!(" ({} by its constants)", p.constant)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "policy {}: handled {}{constant}, declined {}, faults {}, time {:.3} ms ({avg:.0} ns/call)\n",
                p.name,
                p.handled,
                p.declined,
                p.faults,
                p.time.as_secs_f64() * 1e3
            ));
        }
        for o in &self.observers {
            let avg = if o.observed > 0 {
                o.time.as_nanos() as f64 / o.observed as f64
            } else {
                0.0
            };
            out.push_str(&format!(
                "observer {}: queued {}, observed {}, dropped {} (ring full), faults {}, {} batches, time {:.3} ms on its own thread ({avg:.0} ns/exit)\n",
                o.name,
                o.queued,
                o.observed,
                o.dropped,
                o.faults,
                o.batches,
                o.time.as_secs_f64() * 1e3
            ));
        }
        if self.timed_every > 1 && !self.policies.is_empty() {
            out.push_str(&format!(
                "policy times are estimated from one exit in {} (--stats times every call)\n",
                self.timed_every
            ));
        }
        out.push_str(&format!(
            "built-in devices: {}, default handler: {}\n",
            self.builtin, self.default
        ));
        for d in &self.devices {
            out.push_str(&format!(
                "device {}: {} interrupt routes through KVM irqfds, {} interrupts delivered by the VMM, {} bytes of BARs mapped, {} bytes of RAM DMA-mapped\n",
                d.device, d.irq_routes, d.irqs_by_vmm, d.mapped_bar_bytes, d.dma_mapped_bytes
            ));
        }
        out
    }
}

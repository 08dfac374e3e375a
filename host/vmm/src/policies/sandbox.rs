//! Per-policy sandbox settings: limits, grants, WASI authority and what a
//! fault does. Given on the command line as `@key=value` pairs among a
//! policy's config (`--policy p.wasm:@deadline=5ms,@on-fault=gp,port=1`),
//! or as a `sandbox` table in a config file; documented in
//! `docs/sandbox.md`.

use std::time::Duration;

use wasmvisor_exit::{Capabilities, IrqSet, MAX_IRQ_LINE};
use wasmvisor_policy::{Limits, WasiGrants};

use crate::units::{parse_number, parse_size, UnitError};

/// What happens when a policy traps, times out or returns an invalid
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFault {
    /// Fail open: the next subscriber, or the default handler, answers.
    #[default]
    Open,
    /// Fail closed: raise #GP in the guest.
    Gp,
    /// Fail closed: stop the VM (exit code 5).
    Stop,
}

/// One policy's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sandbox {
    pub limits: Limits,
    /// True if the deadline was set for this policy (not inherited).
    pub deadline_set: bool,
    pub on_fault: OnFault,
    /// Faults (summed over vCPUs) after which the policy is skipped for the
    /// rest of the run; 0 = never.
    pub quarantine_after: u64,
    /// Capabilities the operator granted; a policy asking for more is
    /// refused at load time.
    pub grants: Capabilities,
    pub wasi: WasiGrants,
    /// Interrupt lines the policy may drive (`set-irq-line`).
    pub irq: IrqSet,
    /// `@grant=snapshot`: the `snapshot-*` imports. An operator grant
    /// only: the policy's `capabilities` flags predate it, and a policy
    /// holding it keeps its own state across resets (docs/snapshots.md).
    pub snapshot: bool,
    /// `@observe[=RING]`: run as an observer with rings of this many
    /// exits per vCPU (`policies::observer`).
    pub observe: Option<usize>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            limits: Limits::default(),
            deadline_set: false,
            on_fault: OnFault::Open,
            quarantine_after: 10,
            grants: Capabilities::default(),
            wasi: WasiGrants::default(),
            irq: IrqSet::EMPTY,
            snapshot: false,
            observe: None,
        }
    }
}

/// A sandbox setting (`@key=value`) that is not valid, in words.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct SandboxError(pub String);

impl From<UnitError> for SandboxError {
    fn from(e: UnitError) -> SandboxError {
        SandboxError(e.to_string())
    }
}

fn bad(key: &str, value: &str, why: &str) -> SandboxError {
    SandboxError(format!("@{key}={value}: {why}"))
}

/// Parses `500us`, `5ms`, `2s` (a bare number is milliseconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "ms"),
    };
    let n: u64 = num.parse().ok()?;
    match unit {
        "us" => Some(Duration::from_micros(n)),
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        _ => None,
    }
}

impl Sandbox {
    /// The settings that rebuild this sandbox through [`Sandbox::set`]
    /// from the default (for a snapshot's manifest): every field is
    /// written, so a later change of defaults does not change a restored
    /// policy's sandbox.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| out.push((k.to_string(), v));
        if self.deadline_set {
            put(
                "deadline",
                format!("{}us", self.limits.deadline.as_micros()),
            );
        }
        put("memory", self.limits.memory_bytes.to_string());
        put("tables", self.limits.table_elements.to_string());
        let on_fault = match self.on_fault {
            OnFault::Open => "open",
            OnFault::Gp => "gp",
            OnFault::Stop => "stop",
        };
        put("on-fault", on_fault.into());
        put("quarantine", self.quarantine_after.to_string());
        for name in self.grants.names() {
            put("grant", name.into());
        }
        if self.snapshot {
            put("grant", "snapshot".into());
        }
        if self.wasi.clocks {
            put("wasi", "clocks".into());
        }
        if self.wasi.stdio {
            put("wasi", "stdio".into());
        }
        if let Some(ring) = self.observe {
            put("observe", ring.to_string());
        }
        for line in 0..=wasmvisor_exit::MAX_IRQ_LINE {
            if self.irq.contains(line) {
                put("irq", line.to_string());
            }
        }
        out
    }

    /// Applies one setting (`key` without the `@`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SandboxError> {
        match key {
            "deadline" => {
                let d = parse_duration(value)
                    .ok_or_else(|| bad(key, value, "use a duration such as 5ms or 2s"))?;
                if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
                    return Err(bad(key, value, "must be between 1ms and 60s"));
                }
                self.limits.deadline = d;
                self.deadline_set = true;
            }
            "memory" => {
                let m = parse_size(value)?;
                if !(2 << 20..=1 << 30).contains(&m) {
                    return Err(bad(key, value, "must be between 2M and 1G"));
                }
                self.limits.memory_bytes = m as usize;
            }
            "tables" => {
                let n = parse_number(value)?;
                if !(1..=1_000_000).contains(&n) {
                    return Err(bad(key, value, "must be between 1 and 1000000 elements"));
                }
                self.limits.table_elements = n as usize;
            }
            "on-fault" => {
                self.on_fault = match value {
                    "open" => OnFault::Open,
                    "gp" => OnFault::Gp,
                    "stop" => OnFault::Stop,
                    _ => return Err(bad(key, value, "use open, gp or stop")),
                }
            }
            "quarantine" => {
                let n = parse_number(value)?;
                if n > 1_000_000 {
                    return Err(bad(key, value, "must be at most 1000000 (0 = never)"));
                }
                self.quarantine_after = n;
            }
            "grant" => match value {
                "set-registers" => self.grants.set_registers = true,
                "write-memory" => self.grants.write_memory = true,
                "protect-memory" => self.grants.protect_memory = true,
                "debug" => self.grants.debug = true,
                "stop-vm" => self.grants.stop_vm = true,
                "snapshot" => self.snapshot = true,
                _ => {
                    return Err(bad(
                        key,
                        value,
                        "use set-registers, write-memory, protect-memory, debug, stop-vm or snapshot",
                    ))
                }
            },
            "observe" => {
                let ring = match value {
                    "" | "on" => crate::policies::observer::DEFAULT_RING,
                    n => parse_number(n)? as usize,
                };
                if !(1..=1 << 20).contains(&ring) {
                    return Err(bad(key, value, "ring must hold 1 to 1048576 exits"));
                }
                self.observe = Some(ring);
            }
            "wasi" => match value {
                "clocks" => self.wasi.clocks = true,
                "stdio" => self.wasi.stdio = true,
                _ => return Err(bad(key, value, "use clocks or stdio")),
            },
            "irq" => {
                let (first, last) = value.split_once('-').unwrap_or((value, value));
                let line = |t: &str| t.trim().parse::<u32>().ok();
                self.irq = line(first)
                    .zip(line(last))
                    .and_then(|(f, l)| self.irq.with_range(f, l))
                    .ok_or_else(|| {
                        bad(
                            key,
                            value,
                            &format!("use a line or range of lines in 0-{MAX_IRQ_LINE}, e.g. 4 or 3-4"),
                        )
                    })?;
            }
            _ => {
                return Err(SandboxError(format!(
                    "unknown sandbox setting @{key}: use @deadline, @memory, @tables, @on-fault, @quarantine, @grant, @wasi, @irq or @observe"
                )))
            }
        }
        Ok(())
    }

    /// The first capability `requested` holds that was not granted.
    pub fn missing_grant(&self, requested: Capabilities) -> Option<&'static str> {
        let granted = requested.intersect(self.grants);
        requested
            .names()
            .into_iter()
            .find(|n| !granted.names().contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_rebuild_the_sandbox() {
        let mut s = Sandbox::default();
        for (k, v) in [
            ("deadline", "5ms"),
            ("memory", "4M"),
            ("on-fault", "gp"),
            ("grant", "stop-vm"),
            ("grant", "snapshot"),
            ("wasi", "clocks"),
            ("irq", "4"),
            ("irq", "10-11"),
        ] {
            s.set(k, v).unwrap();
        }
        let mut back = Sandbox::default();
        for (k, v) in s.settings() {
            back.set(&k, &v).unwrap();
        }
        assert_eq!(back, s);
        let mut plain = Sandbox::default();
        for (k, v) in Sandbox::default().settings() {
            plain.set(&k, &v).unwrap();
        }
        assert_eq!(plain, Sandbox::default());
    }

    #[test]
    fn settings_parse_and_check_ranges() {
        let mut s = Sandbox::default();
        s.set("deadline", "5ms").unwrap();
        assert_eq!(s.limits.deadline, Duration::from_millis(5));
        assert!(s.deadline_set);
        s.set("memory", "8M").unwrap();
        assert_eq!(s.limits.memory_bytes, 8 << 20);
        s.set("on-fault", "stop").unwrap();
        assert_eq!(s.on_fault, OnFault::Stop);
        s.set("grant", "stop-vm").unwrap();
        assert!(s.grants.stop_vm);
        s.set("wasi", "clocks").unwrap();
        assert!(s.wasi.clocks && !s.wasi.stdio);
        s.set("irq", "4").unwrap();
        s.set("irq", "10-11").unwrap();
        assert!(s.irq.contains(4) && s.irq.contains(11) && !s.irq.contains(5));
        for (k, v) in [
            ("deadline", "0ms"),
            ("deadline", "2h"),
            ("deadline", "61s"),
            ("memory", "1M"),
            ("tables", "0"),
            ("on-fault", "maybe"),
            ("grant", "root"),
            ("wasi", "network"),
            ("irq", "24"),
            ("irq", "5-4"),
            ("irq", "com1"),
            ("colour", "blue"),
        ] {
            assert!(s.set(k, v).is_err(), "@{k}={v} accepted");
        }
    }

    #[test]
    fn missing_grant_names_the_first_ungranted_capability() {
        let mut s = Sandbox::default();
        let want = Capabilities {
            stop_vm: true,
            write_memory: true,
            ..Default::default()
        };
        assert_eq!(s.missing_grant(want), Some("write-memory"));
        s.grants.write_memory = true;
        assert_eq!(s.missing_grant(want), Some("stop-vm"));
        s.grants.stop_vm = true;
        assert_eq!(s.missing_grant(want), None);
    }
}

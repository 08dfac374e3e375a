//! Guards MSRs: watched MSRs are either allowed through to the host,
//! emulated as virtual MSRs, or refused with #GP.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::{
    export_policy, host, Capabilities, Config, Direction, Exit, LogLevel, MsrExit, Policy,
    Subscriptions, Verdict,
};

/// Which accesses are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogMode {
    None,
    Denied,
    All,
}

/// What happens to one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Not watched: some other policy or the host handles it.
    Ignore,
    /// Watched and allowed: the host performs the real access.
    Allow,
    /// A virtual MSR was read and holds this value.
    VirtualRead(u64),
    /// A virtual MSR was written.
    VirtualWrite,
    /// Refused with #GP.
    Deny,
}

/// What a denied access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDeny {
    /// The RDMSR/WRMSR raises #GP(0).
    Gp,
    /// The VM stops with a failure (needs the `stop-vm` capability).
    Stop,
}

#[derive(Debug)]
struct MsrGuard {
    watch: Vec<(u32, u32)>,
    allow: Vec<(u32, u32)>,
    /// Virtual MSRs as (index, current value), sorted by index.
    virt: Vec<(u32, u64)>,
    log: LogMode,
    on_deny: OnDeny,
}

fn contains(ranges: &[(u32, u32)], index: u32) -> bool {
    ranges.iter().any(|&(a, b)| (a..=b).contains(&index))
}

fn rdwr(direction: Direction) -> &'static str {
    match direction {
        Direction::Read => "rdmsr",
        Direction::Write => "wrmsr",
    }
}

impl MsrGuard {
    fn decide(&mut self, msr: &MsrExit) -> Decision {
        if let Ok(i) = self.virt.binary_search_by_key(&msr.index, |&(k, _)| k) {
            let value = &mut self.virt[i].1;
            return match msr.direction {
                Direction::Read => Decision::VirtualRead(*value),
                Direction::Write => {
                    *value = msr.value;
                    Decision::VirtualWrite
                }
            };
        }
        if !contains(&self.watch, msr.index) {
            Decision::Ignore
        } else if contains(&self.allow, msr.index) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

/// The event recorded for a denied access: `rip` and a write's `value`
/// as `"0x…"` strings.
fn denied_json(ev: &Exit, msr: &MsrExit) -> String {
    let direction = match msr.direction {
        Direction::Read => "read",
        Direction::Write => "write",
    };
    let json = Object::new()
        .u64("index", msr.index.into())
        .str("direction", direction)
        .u64("vcpu", ev.vcpu.into())
        .hex("rip", ev.rip);
    match msr.direction {
        Direction::Read => json,
        Direction::Write => json.hex("value", msr.value),
    }
    .finish()
}

impl Policy for MsrGuard {
    const NAME: &'static str = "msr-guard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "allows, virtualizes or denies (#GP) guest MSR accesses";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["watch", "allow", "log", "on-deny", "msr.*"])?;
        let pairs = |key| -> Result<Vec<(u32, u32)>, String> {
            Ok(config
                .msr_ranges(key)?
                .into_iter()
                .map(|r| (r.first, r.last))
                .collect())
        };
        let (watch, allow) = (pairs("watch")?, pairs("allow")?);
        let mut virt: Vec<(u32, u64)> = Vec::new();
        for (index, value) in config.prefixed("msr.") {
            let key = format!("msr.{index}");
            let index = wasmvisor_policy_sdk::parse_u64(index)
                .ok()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| format!("config key `{key}`: `{index}` is not an MSR index"))?;
            let value = wasmvisor_policy_sdk::parse_u64(value)
                .map_err(|e| format!("config key `{key}`: {e}"))?;
            match virt.iter_mut().find(|(i, _)| *i == index) {
                Some(slot) => slot.1 = value,
                None => virt.push((index, value)),
            }
        }
        virt.sort_unstable_by_key(|&(i, _)| i);
        let log = match config.get("log").unwrap_or("denied") {
            "none" => LogMode::None,
            "denied" => LogMode::Denied,
            "all" => LogMode::All,
            other => {
                return Err(format!(
                    "config key `log`: `{other}` is not denied, all or none"
                ))
            }
        };
        let on_deny = match config.get("on-deny").unwrap_or("gp") {
            "gp" => OnDeny::Gp,
            "stop" => OnDeny::Stop,
            other => return Err(format!("config key `on-deny`: `{other}` is not gp or stop")),
        };
        // Virtual MSRs are watched too; subscribe to those outside `watch`.
        let mut subscriptions = virt
            .iter()
            .filter(|&&(index, _)| !contains(&watch, index))
            .fold(
                Subscriptions::new().msr_ranges(config.msr_ranges("watch")?),
                |s, &(index, _)| s.msr(index),
            );
        if on_deny == OnDeny::Stop {
            subscriptions = subscriptions.capabilities(Capabilities::STOP_VM);
        }
        let guard = MsrGuard {
            watch,
            allow,
            virt,
            log,
            on_deny,
        };
        Ok((guard, subscriptions))
    }

    fn on_msr(&mut self, ev: &Exit, msr: MsrExit) -> Verdict {
        let decision = self.decide(&msr);
        let (level, what) = match decision {
            Decision::Ignore => return Verdict::Decline,
            Decision::Allow => (LogLevel::Info, "allowed"),
            Decision::VirtualRead(_) | Decision::VirtualWrite => (LogLevel::Info, "emulated"),
            Decision::Deny => (LogLevel::Warn, "denied"),
        };
        let logged = match self.log {
            LogMode::None => false,
            LogMode::Denied => decision == Decision::Deny,
            LogMode::All => true,
        };
        let (op, index, vcpu, rip) = (rdwr(msr.direction), msr.index, ev.vcpu, ev.rip);
        let line = || format!("msr-guard: {what} {op} {index:#x} on vcpu {vcpu} at rip {rip:#x}");
        if logged {
            host::log(level, &line());
        }
        match decision {
            Decision::Ignore | Decision::Allow => Verdict::Decline,
            Decision::VirtualRead(value) => Verdict::complete(value),
            Decision::VirtualWrite => Verdict::resume(),
            Decision::Deny => {
                host::emit("msr-denied", &denied_json(ev, &msr));
                match self.on_deny {
                    OnDeny::Gp => Verdict::gp(),
                    OnDeny::Stop => Verdict::stop(false, line()),
                }
            }
        }
    }
}

export_policy!(MsrGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::MsrReason;

    fn guard(pairs: &[(&str, &str)]) -> Result<(MsrGuard, Subscriptions), String> {
        MsrGuard::init(&pairs.iter().copied().collect())
    }

    fn access(index: u32, direction: Direction, value: u64) -> MsrExit {
        MsrExit {
            index,
            direction,
            value,
            reason: MsrReason::Filtered,
        }
    }

    #[test]
    fn config_and_subscriptions() {
        let (g, s) = guard(&[
            ("watch", "0x170-0x17f"),
            ("allow", "0x174"),
            ("msr.0x50000000", "7"),
            ("msr.16", "0x10"),
            ("log", "all"),
        ])
        .unwrap();
        assert_eq!(g.log, LogMode::All);
        assert_eq!(g.virt, [(16, 0x10), (0x5000_0000, 7)]);
        let msrs: Vec<_> = s.msrs.iter().map(|m| (m.first, m.last)).collect();
        assert_eq!(msrs, [(0x170, 0x17f), (16, 16), (0x5000_0000, 0x5000_0000)]);
        let (_, s) =
            guard(&[("watch", "0x10-0x20"), ("msr.0x11", "1"), ("msr.0x30", "2")]).unwrap();
        let msrs: Vec<_> = s.msrs.iter().map(|m| (m.first, m.last)).collect();
        assert_eq!(msrs, [(0x10, 0x20), (0x30, 0x30)]);
        assert!(s.capabilities.is_empty());
        let (g, _) = guard(&[]).unwrap();
        assert_eq!((g.log, g.on_deny), (LogMode::Denied, OnDeny::Gp));
        let (g, s) = guard(&[("on-deny", "stop")]).unwrap();
        assert_eq!(g.on_deny, OnDeny::Stop);
        assert_eq!(s.capabilities, Capabilities::STOP_VM);
    }

    #[test]
    fn config_errors() {
        assert_eq!(
            guard(&[("deny", "1")]).err().unwrap(),
            "unknown config key `deny`"
        );
        assert!(guard(&[("log", "loud")]).is_err());
        assert!(guard(&[("on-deny", "panic")]).is_err());
        assert!(guard(&[("msr.zz", "1")]).unwrap_err().contains("msr.zz"));
        assert!(guard(&[("msr.0x100000000", "1")]).is_err());
        assert!(guard(&[("msr.1", "x")]).is_err());
        assert!(guard(&[("watch", "5-1")]).is_err());
    }

    #[test]
    fn decisions() {
        let (mut g, _) = guard(&[
            ("watch", "0x170-0x17f"),
            ("allow", "0x174-0x176"),
            ("allow", "0x300"),
            ("msr.0x50000000", "7"),
        ])
        .unwrap();
        assert_eq!(
            g.decide(&access(0x175, Direction::Read, 0)),
            Decision::Allow
        );
        assert_eq!(
            g.decide(&access(0x177, Direction::Write, 1)),
            Decision::Deny
        );
        // Allowed but not watched: not this policy's business.
        assert_eq!(
            g.decide(&access(0x300, Direction::Read, 0)),
            Decision::Ignore
        );
        let v = 0x5000_0000;
        assert_eq!(
            g.decide(&access(v, Direction::Read, 0)),
            Decision::VirtualRead(7)
        );
        assert_eq!(
            g.decide(&access(v, Direction::Write, 0xabc)),
            Decision::VirtualWrite
        );
        assert_eq!(
            g.decide(&access(v, Direction::Read, 0)),
            Decision::VirtualRead(0xabc)
        );
    }

    #[test]
    fn verdicts_without_logging() {
        let (mut g, _) = guard(&[
            ("watch", "0x10-0x20"),
            ("allow", "0x11"),
            ("msr.0x12", "3"),
            ("log", "none"),
        ])
        .unwrap();
        let ev = Exit {
            vcpu: 0,
            seq: 0,
            rip: 0,
        };
        assert!(g.on_msr(&ev, access(0x11, Direction::Read, 0)).is_decline());
        assert!(g.on_msr(&ev, access(0x99, Direction::Read, 0)).is_decline());
        assert_eq!(
            g.on_msr(&ev, access(0x12, Direction::Read, 0)),
            Verdict::complete(3)
        );
        assert_eq!(
            g.on_msr(&ev, access(0x12, Direction::Write, 4)),
            Verdict::resume()
        );
    }

    #[test]
    fn json() {
        let ev = Exit {
            vcpu: 1,
            seq: 5,
            rip: 0x8123,
        };
        assert_eq!(
            denied_json(&ev, &access(0x175, Direction::Read, 0)),
            r#"{"index":373,"direction":"read","vcpu":1,"rip":"0x8123"}"#
        );
        assert_eq!(
            denied_json(&ev, &access(0x10, Direction::Write, 9)),
            r#"{"index":16,"direction":"write","vcpu":1,"rip":"0x8123","value":"0x9"}"#
        );
    }
}

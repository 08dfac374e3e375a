//! Claims ports, MSRs and MMIO ranges and answers every access at once:
//! reads return 0, writes are dropped. Measures the cost of a round trip
//! through a policy; with `constant=true` it declares those answers as
//! constants instead, and the host gives them without calling it.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::{
    export_policy, host, Config, Direction, Exit, IoExit, MmioExit, MsrExit, Policy, Subscriptions,
    Verdict,
};

struct Noop;

fn answer(direction: Direction) -> Verdict {
    match direction {
        Direction::Read => Verdict::complete(0),
        Direction::Write => Verdict::resume(),
    }
}

impl Policy for Noop {
    const NAME: &'static str = "noop";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "answers claimed accesses with zeros; for benchmarks";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["ports", "msrs", "mmio", "constant"])?;
        let subscriptions = config.regions("mmio")?.into_iter().fold(
            Subscriptions::new()
                .port_ranges(config.port_ranges("ports")?)
                .msr_ranges(config.msr_ranges("msrs")?),
            |s, (base, len)| s.mmio(base, len),
        );
        if config.bool("constant")?.unwrap_or(false) {
            declare_constants(&subscriptions)?;
        }
        Ok((Noop, subscriptions))
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        answer(io.direction)
    }

    fn on_mmio(&mut self, _ev: &Exit, mmio: MmioExit) -> Verdict {
        answer(mmio.direction)
    }

    fn on_msr(&mut self, _ev: &Exit, msr: MsrExit) -> Verdict {
        answer(msr.direction)
    }
}

/// Hands every claimed range to the host as "reads 0, writes dropped".
fn declare_constants(s: &Subscriptions) -> Result<(), String> {
    let refused = |e| format!("the host refused a constant answer: {e:?}");
    for r in &s.ports {
        host::constant_ports(*r, 0).map_err(refused)?;
    }
    for r in &s.msrs {
        host::constant_msrs(*r, 0).map_err(refused)?;
    }
    for r in &s.mmio {
        host::constant_mmio(*r, 0).map_err(refused)?;
    }
    Ok(())
}

export_policy!(Noop);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        let c = Config::from_pairs([
            ("ports", "0x80"),
            ("ports", "0x500-0x507"),
            ("msrs", "0x40000100-0x400001ff"),
            ("mmio", "0xd0000000+0x1000"),
        ]);
        let (_, s) = Noop::init(&c).unwrap();
        assert_eq!(s.ports.len(), 2);
        assert_eq!(
            (s.msrs[0].first, s.msrs[0].last),
            (0x4000_0100, 0x4000_01ff)
        );
        assert_eq!((s.mmio[0].base, s.mmio[0].len), (0xd000_0000, 0x1000));
        let (_, s) = Noop::init(&Config::default()).unwrap();
        assert!(s.ports.is_empty() && s.msrs.is_empty() && s.mmio.is_empty());
        assert_eq!(
            Noop::init(&Config::from_pairs([("port", "1")])).err(),
            Some("unknown config key `port`".into())
        );
    }

    #[test]
    fn answers() {
        let ev = Exit {
            vcpu: 0,
            seq: 0,
            rip: 0,
        };
        let io = IoExit {
            port: 0x80,
            size: 1,
            direction: Direction::Read,
            data: 0,
        };
        assert_eq!(Noop.on_io(&ev, io), Verdict::complete(0));
        let io = IoExit {
            direction: Direction::Write,
            ..io
        };
        assert_eq!(Noop.on_io(&ev, io), Verdict::resume());
        assert!(Noop.on_hlt(&ev).is_decline());
    }
}

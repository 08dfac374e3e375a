//! Constant answers a policy declares at init: accesses the host answers
//! natively on the policy's behalf, without calling into Wasm.
//!
//! A call into a Wasm policy costs several hundred ns on top of an exit,
//! most of it cold caches after `KVM_RUN`, which no amount of tuning the
//! call removes. For registers whose behaviour never changes (an ID
//! register, a status register that always reads "ready", a write-only
//! sink) the policy can say so once, and the host answers those exits at
//! native cost. The policy still owns the semantics: it declared them, and
//! only inside ranges it subscribed to.

use std::ops::RangeInclusive;

use crate::event::{size_mask, Direction, ExitKind};
use crate::{GpaRange, Subscriptions};

/// Where a constant answer applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstantTarget {
    Ports(RangeInclusive<u16>),
    Msrs(RangeInclusive<u32>),
    Mmio(GpaRange),
}

/// Reads of `target` return `value` (cut to the access size); writes to
/// it are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constant {
    pub target: ConstantTarget,
    pub value: u64,
}

/// How a constant answers one exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstantAnswer {
    /// A read: the guest reads this.
    Read(u64),
    /// A write: dropped.
    Write,
}

fn answer(direction: Direction, value: u64, size: u8) -> ConstantAnswer {
    match direction {
        Direction::Read => ConstantAnswer::Read(value & size_mask(size)),
        Direction::Write => ConstantAnswer::Write,
    }
}

/// The constant answer for `kind`, if one of `constants` covers it.
pub fn constant_answer(constants: &[Constant], kind: &ExitKind) -> Option<ConstantAnswer> {
    constants.iter().find_map(|c| match (&c.target, kind) {
        (ConstantTarget::Ports(r), ExitKind::Io(io)) if r.contains(&io.port) => {
            Some(answer(io.direction, c.value, io.size))
        }
        (ConstantTarget::Msrs(r), ExitKind::Msr(m)) if r.contains(&m.index) => {
            Some(answer(m.direction, c.value, 8))
        }
        (ConstantTarget::Mmio(r), ExitKind::Mmio(m))
            if m.gpa >= r.base && m.gpa - r.base < r.len =>
        {
            Some(answer(m.direction, c.value, m.size))
        }
        _ => None,
    })
}

/// Why the declared constants are refused: each must lie inside the
/// policy's own subscriptions, so a policy answers only for accesses it
/// was routed anyway.
pub fn constants_outside(subs: &Subscriptions) -> Option<String> {
    subs.constants.iter().find_map(|c| {
        let inside = match &c.target {
            ConstantTarget::Ports(r) => subs
                .ports
                .iter()
                .any(|s| s.start() <= r.start() && r.end() <= s.end()),
            ConstantTarget::Msrs(r) => subs
                .msrs
                .iter()
                .any(|s| s.start() <= r.start() && r.end() <= s.end()),
            ConstantTarget::Mmio(r) => subs.mmio.iter().any(|s| {
                r.len > 0
                    && s.base <= r.base
                    && r.base.saturating_add(r.len) <= s.base.saturating_add(s.len)
            }),
        };
        (!inside).then(|| {
            format!(
                "declares a constant answer for {} outside its subscriptions",
                match &c.target {
                    ConstantTarget::Ports(r) => format!("ports {:#x}-{:#x}", r.start(), r.end()),
                    ConstantTarget::Msrs(r) => format!("MSRs {:#x}-{:#x}", r.start(), r.end()),
                    ConstantTarget::Mmio(r) => format!("MMIO {:#x}+{:#x}", r.base, r.len),
                }
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{IoExit, MmioExit, MsrExit, MsrReason};

    fn io(port: u16, direction: Direction, size: u8) -> ExitKind {
        ExitKind::Io(IoExit {
            port,
            size,
            direction,
            data: 0,
        })
    }

    #[test]
    fn reads_get_the_value_cut_to_size_and_writes_are_dropped() {
        let cs = [
            Constant {
                target: ConstantTarget::Ports(0x60..=0x64),
                value: 0x1234,
            },
            Constant {
                target: ConstantTarget::Mmio(GpaRange {
                    base: 0xd000_0000,
                    len: 0x1000,
                }),
                value: u64::MAX,
            },
        ];
        assert_eq!(
            constant_answer(&cs, &io(0x62, Direction::Read, 1)),
            Some(ConstantAnswer::Read(0x34))
        );
        assert_eq!(
            constant_answer(&cs, &io(0x64, Direction::Write, 2)),
            Some(ConstantAnswer::Write)
        );
        assert_eq!(constant_answer(&cs, &io(0x65, Direction::Read, 1)), None);
        let mmio = |gpa| {
            ExitKind::Mmio(MmioExit {
                gpa,
                size: 4,
                direction: Direction::Read,
                data: 0,
            })
        };
        assert_eq!(
            constant_answer(&cs, &mmio(0xd000_0ffc)),
            Some(ConstantAnswer::Read(0xffff_ffff))
        );
        assert_eq!(constant_answer(&cs, &mmio(0xd000_1000)), None);
        let msr = ExitKind::Msr(MsrExit {
            index: 0x10,
            direction: Direction::Read,
            value: 0,
            reason: MsrReason::Filtered,
        });
        assert_eq!(constant_answer(&cs, &msr), None);
    }

    #[test]
    fn constants_must_lie_inside_the_subscriptions() {
        let mut subs = Subscriptions {
            ports: vec![0x60..=0x6f],
            ..Default::default()
        };
        subs.constants.push(Constant {
            target: ConstantTarget::Ports(0x60..=0x64),
            value: 0,
        });
        assert_eq!(constants_outside(&subs), None);
        subs.constants.push(Constant {
            target: ConstantTarget::Msrs(0x10..=0x10),
            value: 0,
        });
        assert_eq!(
            constants_outside(&subs).as_deref(),
            Some("declares a constant answer for MSRs 0x10-0x10 outside its subscriptions")
        );
    }
}

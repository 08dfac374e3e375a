//! The conformance policy (`docs/conformance.md`) in Rust: the reference
//! the C, Python and JavaScript builds are checked against. Every line of
//! behaviour here is a row of the spec's table.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::{
    export_policy, host, mask, Action, Capabilities, Config, Direction, EventSet, Exit, IoExit,
    MemAccess, MemViolation, MmioExit, MsrExit, Policy, Protection, Subscriptions, Verdict,
    GP_VECTOR,
};

const PORT_COUNT: u16 = 0x520;
const PORT_LAST: u16 = 0x521;
const PORT_EMIT: u16 = 0x522;
const PORT_PEEK: u16 = 0x523;
const MSR_VALUE: u32 = 0x5100_0000;
const MSR_NEXT: u32 = 0x5100_0001;
const MMIO_BASE: u64 = 0xd100_0000;
const MMIO_LEN: u64 = 0x1000;
const GUARDED_PAGE: u64 = 0x7_0000;
/// A write of this value to the guarded page is denied.
const DENIED_VALUE: u64 = 0xbad;
const DEFAULT_KEY: u64 = 0x5a5a_5a5a;
const INITIAL_MSR: u64 = 0x1234_5678_9abc_def0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conformance {
    key: u64,
    count: u64,
    last: u64,
    msr: u64,
    addr: u64,
}

impl Conformance {
    /// The exits this instance was given (what `save-state` hands on).
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Policy for Conformance {
    const NAME: &'static str = "conformance";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "conformance policy (Rust)";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["key"])?;
        let key = config.u32("key")?.map_or(DEFAULT_KEY, u64::from);
        let subscriptions = Subscriptions::new()
            .ports(PORT_COUNT, PORT_PEEK)
            .msrs(MSR_VALUE, MSR_NEXT)
            .mmio(MMIO_BASE, MMIO_LEN)
            .events(EventSet::MEM_VIOLATION)
            .protect(GUARDED_PAGE, 0x1000, Protection::WriteProtect)
            .capabilities(Capabilities::PROTECT_MEMORY);
        let policy = Conformance {
            key,
            count: 0,
            last: 0,
            msr: INITIAL_MSR,
            addr: 0,
        };
        Ok((policy, subscriptions))
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        self.count += 1;
        let data = u64::from(io.data);
        let value = match (io.port, io.direction) {
            (PORT_COUNT, Direction::Read) => self.count,
            (PORT_LAST, Direction::Write) => {
                self.last = data;
                return Verdict::resume();
            }
            (PORT_LAST, Direction::Read) => self.last ^ self.key,
            (PORT_EMIT, Direction::Write) => {
                host::emit("conformance", &format!("{{\"value\":{data}}}"));
                return Verdict::resume();
            }
            (PORT_PEEK, Direction::Write) => {
                self.addr = data;
                return Verdict::resume();
            }
            (PORT_PEEK, Direction::Read) => match host::read_phys(self.addr, 4) {
                Ok(bytes) if bytes.len() == 4 => {
                    u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                }
                _ => 0xffff_ffff,
            },
            _ => return Verdict::decline(),
        };
        Verdict::complete(value & mask(io.size))
    }

    fn on_msr(&mut self, _ev: &Exit, msr: MsrExit) -> Verdict {
        self.count += 1;
        match (msr.index, msr.direction) {
            (MSR_VALUE, Direction::Read) => Verdict::complete(self.msr),
            (MSR_VALUE, Direction::Write) => {
                self.msr = msr.value;
                Verdict::resume()
            }
            (MSR_NEXT, Direction::Read) => Verdict::complete(self.msr.wrapping_add(1)),
            (MSR_NEXT, Direction::Write) => Verdict::inject(GP_VECTOR, Some(0)),
            _ => Verdict::decline(),
        }
    }

    fn on_mmio(&mut self, _ev: &Exit, mmio: MmioExit) -> Verdict {
        self.count += 1;
        if !(MMIO_BASE..MMIO_BASE + MMIO_LEN).contains(&mmio.gpa) {
            return Verdict::decline();
        }
        match mmio.direction {
            Direction::Read => Verdict::complete(((mmio.gpa - MMIO_BASE) * 3) & mask(mmio.size)),
            Direction::Write => Verdict::resume(),
        }
    }

    fn on_mem_violation(&mut self, _ev: &Exit, v: MemViolation) -> Verdict {
        self.count += 1;
        let denied = v.access == MemAccess::Write && v.data & mask(v.size) == DENIED_VALUE;
        Verdict::handled(vec![if denied { Action::Deny } else { Action::Allow }])
    }

    fn save_state(&self) -> Vec<u8> {
        self.count.to_le_bytes().to_vec()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = state.try_into().map_err(|_| {
            format!(
                "conformance: the state must be 8 bytes, got {}",
                state.len()
            )
        })?;
        self.count = u64::from_le_bytes(bytes);
        Ok(())
    }
}

export_policy!(Conformance);

/// Each row of the table in `docs/conformance.md`, through the SDK's fake
/// host, then the guest's own sequence of checks.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, Harness};
    use wasmvisor_policy_sdk::{CpuidLeaf, Exception, ExitKind, HostError};

    fn conformance() -> Harness<Conformance> {
        Harness::new(&[]).unwrap()
    }

    /// `conformance()` with RAM below 1 MiB holding 0x600df00d at the
    /// guarded page, as the guest leaves it.
    fn with_ram() -> Harness<Conformance> {
        let h = conformance();
        h.host()
            .map_ram(0, 0x10_0000)
            .map_phys(GUARDED_PAGE, &0x600d_f00d_u32.to_le_bytes());
        h
    }

    fn init_error(config: &[(&str, &str)]) -> String {
        Harness::<Conformance>::new(config).unwrap_err()
    }

    /// Delivers each exit in turn and checks the answer to it.
    fn answers(h: &mut Harness<Conformance>, rows: &[(ExitKind, Verdict)]) {
        for (i, (kind, verdict)) in rows.iter().enumerate() {
            assert_eq!(&h.exit(*kind), verdict, "row {i}: {kind:?}");
        }
    }

    fn deny() -> Verdict {
        Verdict::handled(vec![Action::Deny])
    }

    fn allow() -> Verdict {
        Verdict::handled(vec![Action::Allow])
    }

    #[test]
    fn identity() {
        assert_eq!(Conformance::NAME, "conformance");
        assert_eq!(Conformance::VERSION, "1.0.0");
        assert!(Conformance::DESCRIPTION.contains("(Rust)"));
    }

    #[test]
    fn subscriptions() {
        let h = conformance();
        let s = h.subscriptions();
        let ports: Vec<_> = s.ports.iter().map(|p| (p.first, p.last)).collect();
        assert_eq!(ports, [(0x520, 0x523)]);
        let msrs: Vec<_> = s.msrs.iter().map(|m| (m.first, m.last)).collect();
        assert_eq!(msrs, [(0x5100_0000, 0x5100_0001)]);
        let mmio: Vec<_> = s.mmio.iter().map(|r| (r.base, r.len)).collect();
        assert_eq!(mmio, [(0xd100_0000, 0x1000)]);
        assert_eq!(s.events, EventSet::MEM_VIOLATION);
        let protect: Vec<_> = s
            .protect
            .iter()
            .map(|p| (p.range.base, p.range.len, p.mode))
            .collect();
        assert_eq!(protect, [(0x7_0000, 0x1000, Protection::WriteProtect)]);
        assert_eq!(s.capabilities, Capabilities::PROTECT_MEMORY);
        assert!(s.cpuid.is_empty());
    }

    #[test]
    fn config_errors() {
        let unknown = init_error(&[("colour", "red")]);
        assert!(unknown.contains("unknown config key") && unknown.contains("colour"));
        assert!(init_error(&[("key", "zzz")]).contains("key"));
        // The key must fit in 32 bits.
        assert!(init_error(&[("key", "0x1_0000_0000")]).contains("key"));
        assert!(Harness::<Conformance>::new(&[("key", "0xffff_ffff")]).is_ok());
    }

    #[test]
    fn port_0x520_reads_the_exit_count() {
        answers(
            &mut conformance(),
            &[
                (exit::io_read(0x520, 4), Verdict::complete(1)),
                (exit::io_write(0x521, 4, 0), Verdict::resume()),
                (exit::io_read(0x520, 4), Verdict::complete(3)),
                // Not in the table: declined, but counted.
                (exit::io_write(0x520, 1, 9), Verdict::decline()),
                (exit::io_read(0x520, 1), Verdict::complete(5)),
            ],
        );
    }

    #[test]
    fn port_0x521_holds_last_xor_key() {
        answers(
            &mut conformance(),
            &[
                (exit::io_write(0x521, 4, 0x1122_3344), Verdict::resume()),
                (
                    exit::io_read(0x521, 4),
                    Verdict::complete(0x1122_3344 ^ 0x5a5a_5a5a),
                ),
                // Cut to the access size.
                (exit::io_read(0x521, 1), Verdict::complete(0x1e)),
                (exit::io_read(0x521, 2), Verdict::complete(0x691e)),
            ],
        );
        answers(
            &mut Harness::new(&[("key", "7")]).unwrap(),
            &[
                (exit::io_write(0x521, 1, 1), Verdict::resume()),
                (exit::io_read(0x521, 1), Verdict::complete(6)),
            ],
        );
    }

    #[test]
    fn port_0x522_emits_the_value() {
        let mut h = conformance();
        answers(
            &mut h,
            &[
                (exit::io_write(0x522, 2, 0xabcd), Verdict::resume()),
                // A read of 0x522 is not in the table.
                (exit::io_read(0x522, 1), Verdict::decline()),
            ],
        );
        assert_eq!(h.host().events_of("conformance"), [r#"{"value":43981}"#]);
        assert_eq!(h.host().events().len(), 1);
    }

    #[test]
    fn port_0x523_reads_guest_memory_through_read_phys() {
        let mut h = with_ram();
        // Outside RAM the import fails, and the port reads all-ones.
        let outside = h.host().run(|| host::read_phys(0xfff0_0000, 4));
        assert_eq!(outside, Err(HostError::OutOfRange));
        answers(
            &mut h,
            &[
                (exit::io_write(0x523, 4, 0x7_0000), Verdict::resume()),
                (exit::io_read(0x523, 4), Verdict::complete(0x600d_f00d)),
                (exit::io_read(0x523, 1), Verdict::complete(0x0d)),
                // In RAM but for its last bytes.
                (exit::io_write(0x523, 4, 0xf_fffe), Verdict::resume()),
                (exit::io_read(0x523, 4), Verdict::complete(0xffff_ffff)),
                (exit::io_write(0x523, 4, 0xfff0_0000), Verdict::resume()),
                (exit::io_read(0x523, 4), Verdict::complete(0xffff_ffff)),
                (exit::io_read(0x523, 2), Verdict::complete(0xffff)),
            ],
        );
    }

    #[test]
    fn the_virtual_msrs() {
        let gp = Verdict::handled(vec![Action::Inject(Exception {
            vector: 13,
            error_code: Some(0),
        })]);
        answers(
            &mut conformance(),
            &[
                (
                    exit::rdmsr(0x5100_0000),
                    Verdict::complete(0x1234_5678_9abc_def0),
                ),
                (exit::wrmsr(0x5100_0000, 0x1_0000_0002), Verdict::resume()),
                (exit::rdmsr(0x5100_0000), Verdict::complete(0x1_0000_0002)),
                (exit::rdmsr(0x5100_0001), Verdict::complete(0x1_0000_0003)),
                // msr + 1 wraps at 2^64.
                (exit::wrmsr(0x5100_0000, u64::MAX), Verdict::resume()),
                (exit::rdmsr(0x5100_0001), Verdict::complete(0)),
                (exit::wrmsr(0x5100_0001, 5), gp),
                // Another MSR, should the host route one here.
                (exit::rdmsr(0x10), Verdict::decline()),
            ],
        );
    }

    #[test]
    fn mmio_reads_three_times_the_offset() {
        answers(
            &mut conformance(),
            &[
                (exit::mmio_read(0xd100_0010, 4), Verdict::complete(0x30)),
                (exit::mmio_read(0xd100_0101, 1), Verdict::complete(0x03)),
                (exit::mmio_read(0xd100_0fff, 8), Verdict::complete(0x2ffd)),
                (exit::mmio_write(0xd100_0010, 4, 0xffff), Verdict::resume()),
                (exit::mmio_read(0xd100_0010, 4), Verdict::complete(0x30)),
                // Outside the window.
                (exit::mmio_read(0xd100_1000, 4), Verdict::decline()),
                (exit::mmio_write(0xd0ff_ffff, 1, 0), Verdict::decline()),
            ],
        );
    }

    #[test]
    fn memory_violations_deny_0xbad_and_allow_the_rest() {
        answers(
            &mut conformance(),
            &[
                (exit::mem_write(0x7_0000, 4, 0xbad), deny()),
                (exit::mem_write(0x7_0000, 4, 0x600d_f00d), allow()),
                // The data is cut to the access size before comparing.
                (exit::mem_write(0x7_0000, 2, 0x1_0bad), deny()),
                (exit::mem_write(0x7_0000, 1, 0xbad), allow()),
                (exit::mem_read(0x7_0000, 4), allow()),
                (exit::io_read(0x520, 4), Verdict::complete(6)),
            ],
        );
    }

    #[test]
    fn save_and_restore_state_carry_the_count() {
        let mut h = conformance();
        for _ in 0..3 {
            h.exit(exit::hlt());
        }
        h.exit(exit::io_read(0x520, 1));
        assert_eq!(h.save_state(), 1u64.to_le_bytes());

        let mut next = conformance();
        assert_eq!(next.restore_state(&41u64.to_le_bytes()), Ok(()));
        assert_eq!(next.policy().count(), 41);
        assert_eq!(next.exit(exit::io_read(0x520, 4)), Verdict::complete(42));
        assert_eq!(next.save_state(), 42u64.to_le_bytes());
        for bad in [&[][..], &[1; 7], &[1; 9]] {
            assert!(next.restore_state(bad).unwrap_err().contains("8 bytes"));
        }
        assert_eq!(next.policy().count(), 42);
    }

    #[test]
    fn cpuid_passes_the_leaf_through() {
        // Leaf 0 of an Intel CPU: the highest leaf and "GenuineIntel".
        let vendor = CpuidLeaf {
            function: 0,
            index: 0,
            eax: 0xd,
            ebx: 0x756e_6547,
            ecx: 0x6c65_746e,
            edx: 0x4965_6e69,
        };
        assert_eq!(conformance().cpuid(vendor), vendor);
    }

    /// The accesses of `examples/guests/conformance.S`, in order, with the
    /// answers the guest expects ("What the guest checks").
    #[test]
    fn the_guest_sequence() {
        let mut h = with_ram();
        answers(
            &mut h,
            &[
                (exit::io_read(0x520, 4), Verdict::complete(1)),
                (exit::io_write(0x521, 4, 0x1122_3344), Verdict::resume()),
                (
                    exit::io_read(0x521, 4),
                    Verdict::complete(0x1122_3344 ^ 0x5a5a_5a5a),
                ),
                (exit::io_read(0x521, 1), Verdict::complete(0x1e)),
                (exit::io_read(0x520, 4), Verdict::complete(5)),
                (exit::io_write(0x522, 4, 0xabcd), Verdict::resume()),
                (exit::mem_write(0x7_0000, 4, 0x600d_f00d), allow()),
                (exit::mem_write(0x7_0000, 4, 0xbad), deny()),
                (exit::io_write(0x523, 4, 0x7_0000), Verdict::resume()),
                (exit::io_read(0x523, 4), Verdict::complete(0x600d_f00d)),
                (exit::io_write(0x523, 4, 0xfff0_0000), Verdict::resume()),
                (exit::io_read(0x523, 4), Verdict::complete(0xffff_ffff)),
                (
                    exit::rdmsr(0x5100_0000),
                    Verdict::complete(0x1234_5678_9abc_def0),
                ),
                (exit::wrmsr(0x5100_0000, 0x1_0000_0002), Verdict::resume()),
                (exit::rdmsr(0x5100_0001), Verdict::complete(0x1_0000_0003)),
                (exit::wrmsr(0x5100_0001, 0), Verdict::gp()),
                (exit::mmio_read(0xd100_0010, 4), Verdict::complete(0x30)),
                (exit::mmio_read(0xd100_0101, 1), Verdict::complete(0x03)),
                (exit::mmio_write(0xd100_0010, 4, 1), Verdict::resume()),
                (exit::mmio_read(0xd100_0010, 4), Verdict::complete(0x30)),
                (exit::io_read(0x520, 4), Verdict::complete(21)),
            ],
        );
        assert_eq!(h.host().events_of("conformance"), [r#"{"value":43981}"#]);
    }
}

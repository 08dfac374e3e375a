//! The conformance policy (`docs/conformance.md`) in Rust: the reference
//! the C, Python and JavaScript builds are checked against. Every line of
//! behaviour here is a row of the spec's table.

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

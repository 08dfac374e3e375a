//! Traces the guest's system calls through a hardware breakpoint on its
//! system-call entry point.
//!
//! The entry point is not configured: the tracer watches the guest kernel
//! program IA32_LSTAR (the SYSCALL target) and puts an execute breakpoint
//! on the value it writes. Each hit is one system call: the tracer reads
//! the number and arguments from the registers, and for `write` the
//! buffer through the guest's page tables, emits a `syscall` event and
//! lets the guest continue. Optionally it single-steps the first few
//! instructions of the first call.

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::{
    export_policy, host, Action, Breakpoint, BreakpointKind, Capabilities, Config, DebugCause,
    DebugExit, Direction, EventSet, Exit, HostError, LogLevel, MsrExit, Policy, Reg, Subscriptions,
    Verdict,
};

/// IA32_LSTAR: the 64-bit SYSCALL entry point.
const MSR_LSTAR: u32 = 0xc000_0082;
/// The shared counter of breakpoint hits.
const COUNTER: &str = "syscalls";

/// System-call names by number (the minios table, see
/// examples/guests/README.md).
fn syscall_name(nr: u64) -> &'static str {
    match nr {
        1 => "write",
        2 => "getpid",
        3 => "yield",
        _ => "unknown",
    }
}

/// The host calls the tracer makes, behind a trait so that the logic runs
/// in unit tests off the host.
trait Guest {
    fn reg(&mut self, reg: Reg) -> u64;
    fn read_virt(&mut self, gva: u64, len: u32) -> Result<Vec<u8>, HostError>;
    fn set_breakpoint(&mut self, bp: Breakpoint) -> Result<u8, HostError>;
    fn clear_breakpoint(&mut self, slot: u8) -> Result<(), HostError>;
    fn counter_add(&mut self, key: &str, delta: i64) -> i64;
    fn emit(&mut self, kind: &str, json: &str);
    fn log(&mut self, level: LogLevel, msg: &str);
}

/// The real host.
struct Live;

impl Guest for Live {
    fn reg(&mut self, reg: Reg) -> u64 {
        host::get_reg(reg)
    }
    fn read_virt(&mut self, gva: u64, len: u32) -> Result<Vec<u8>, HostError> {
        host::read_virt(gva, len)
    }
    fn set_breakpoint(&mut self, bp: Breakpoint) -> Result<u8, HostError> {
        host::set_breakpoint(bp)
    }
    fn clear_breakpoint(&mut self, slot: u8) -> Result<(), HostError> {
        host::clear_breakpoint(slot)
    }
    fn counter_add(&mut self, key: &str, delta: i64) -> i64 {
        host::counter_add(key, delta)
    }
    fn emit(&mut self, kind: &str, json: &str) {
        host::emit(kind, json);
    }
    fn log(&mut self, level: LogLevel, msg: &str) {
        host::log(level, msg);
    }
}

/// Single-stepping after the first hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stepping {
    /// Not started yet (or `step=0`).
    Idle,
    /// Stepping; this many instructions were stepped so far.
    Active(u32),
    /// Finished; later hits just resume.
    Done,
}

#[derive(Debug)]
struct SyscallTracer {
    /// Instructions to single-step from the first hit.
    step: u32,
    /// Largest `write` payload read, in bytes.
    max_payload: u32,
    /// Log each call at info level too.
    log: bool,
    /// The entry point and the breakpoint slot on it.
    entry: Option<(u64, u8)>,
    stepping: Stepping,
}

impl SyscallTracer {
    fn msr(&mut self, g: &mut dyn Guest, ev: &Exit, msr: &MsrExit) -> Verdict {
        if msr.index != MSR_LSTAR || msr.direction != Direction::Write {
            return Verdict::Decline;
        }
        let gva = msr.value;
        if let Some((old, slot)) = self.entry {
            if old == gva {
                return Verdict::Decline;
            }
            if let Err(e) = g.clear_breakpoint(slot) {
                g.log(
                    LogLevel::Warn,
                    &format!("syscall-tracer: clearing slot {slot}: {}", e.name()),
                );
            }
            self.entry = None;
        }
        let bp = Breakpoint {
            kind: BreakpointKind::Execute,
            gva,
            len: 1,
        };
        match g.set_breakpoint(bp) {
            Ok(slot) => {
                self.entry = Some((gva, slot));
                let json = Object::new()
                    .u64("gva", gva)
                    .u64("slot", u64::from(slot))
                    .u64("rip", ev.rip)
                    .finish();
                g.emit("breakpoint", &json);
                g.log(
                    LogLevel::Info,
                    &format!(
                        "syscall-tracer: IA32_LSTAR = {gva:#x}: execute breakpoint in slot {slot}"
                    ),
                );
            }
            Err(e) => g.log(
                LogLevel::Error,
                &format!(
                    "syscall-tracer: cannot set a breakpoint at IA32_LSTAR {gva:#x}: {}",
                    e.name()
                ),
            ),
        }
        // KVM stores the value: the guest's kernel set it.
        Verdict::Decline
    }

    /// One system call: the breakpoint on the entry fired.
    fn hit(&mut self, g: &mut dyn Guest, ev: &Exit) -> Verdict {
        let n = g.counter_add(COUNTER, 1);
        let (nr, rdi, rsi) = (g.reg(Reg::Rax), g.reg(Reg::Rdi), g.reg(Reg::Rsi));
        let name = syscall_name(nr);
        let mut json = Object::new()
            .i64("n", n)
            .u64("nr", nr)
            .str("name", name)
            .u64("rdi", rdi)
            .u64("rsi", rsi);
        let mut line = format!("syscall-tracer: #{n} {name}({rdi:#x}, {rsi:#x})");
        if name == "write" {
            let len = u32::try_from(rsi.min(u64::from(self.max_payload))).unwrap_or(0);
            match g.read_virt(rdi, len) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    line.push_str(&format!(" {text:?}"));
                    json = json
                        .str("data", &text)
                        .bool("truncated", rsi > u64::from(len));
                }
                Err(e) => {
                    line.push_str(&format!(" (buffer unreadable: {})", e.name()));
                    json = json.str("error", e.name());
                }
            }
        }
        g.emit("syscall", &json.u64("rip", ev.rip).finish());
        if self.log {
            g.log(LogLevel::Info, &line);
        }
        if self.stepping == Stepping::Idle && self.step > 0 {
            self.stepping = Stepping::Active(0);
            return self.step_once(g, ev);
        }
        Verdict::resume()
    }

    /// Records the instruction at `ev.rip` and executes it alone, or ends
    /// stepping once `step` instructions ran.
    fn step_once(&mut self, g: &mut dyn Guest, ev: &Exit) -> Verdict {
        let Stepping::Active(done) = self.stepping else {
            return Verdict::resume();
        };
        if done >= self.step {
            self.stepping = Stepping::Done;
            return Verdict::resume();
        }
        self.stepping = Stepping::Active(done + 1);
        let json = Object::new()
            .u64("i", u64::from(done + 1))
            .u64("rip", ev.rip)
            .finish();
        g.emit("step", &json);
        Verdict::Handled(vec![Action::Step])
    }

    fn debug(&mut self, g: &mut dyn Guest, ev: &Exit, d: &DebugExit) -> Verdict {
        match d.cause {
            DebugCause::SingleStep if matches!(self.stepping, Stepping::Active(_)) => {
                self.step_once(g, ev)
            }
            DebugCause::HwBreakpoint => match self.entry {
                Some((gva, slot))
                    if d.slot == Some(slot) || (d.slot.is_none() && ev.rip == gva) =>
                {
                    self.hit(g, ev)
                }
                _ => Verdict::Decline,
            },
            _ => Verdict::Decline,
        }
    }
}

impl Policy for SyscallTracer {
    const NAME: &'static str = "syscall-tracer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "traces system calls through a breakpoint on the entry the guest writes to IA32_LSTAR";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["step", "max-payload", "log"])?;
        let step = config.u32("step")?.unwrap_or(0);
        if step > 10_000 {
            return Err("config key `step`: at most 10000 instructions".into());
        }
        let max_payload = config.u32("max-payload")?.unwrap_or(256);
        if max_payload > 65536 {
            return Err("config key `max-payload`: at most 65536 bytes".into());
        }
        let log = config.bool("log")?.unwrap_or(false);
        let subs = Subscriptions::new()
            .msr(MSR_LSTAR)
            .events(EventSet::DEBUG)
            .capabilities(Capabilities::DEBUG);
        let tracer = SyscallTracer {
            step,
            max_payload,
            log,
            entry: None,
            stepping: Stepping::Idle,
        };
        Ok((tracer, subs))
    }

    fn on_msr(&mut self, ev: &Exit, msr: MsrExit) -> Verdict {
        self.msr(&mut Live, ev, &msr)
    }

    fn on_debug(&mut self, ev: &Exit, debug: DebugExit) -> Verdict {
        self.debug(&mut Live, ev, &debug)
    }
}

export_policy!(SyscallTracer);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wasmvisor_policy_sdk::MsrReason;

    const ENTRY: u64 = 0xffff_ffff_8010_1000;
    const BUF: u64 = 0xffff_ffff_8010_31c0;

    #[derive(Default)]
    struct Fake {
        regs: BTreeMap<u8, u64>,
        mem: Vec<u8>,
        slots: Vec<Option<u64>>,
        refuse: bool,
        counter: i64,
        events: Vec<(String, String)>,
        logs: Vec<String>,
    }

    fn reg_key(r: Reg) -> u8 {
        r as u8
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                mem: b"task init pid 1\n".to_vec(),
                ..Fake::default()
            }
        }
        fn set(&mut self, r: Reg, v: u64) {
            self.regs.insert(reg_key(r), v);
        }
        fn events(&self, kind: &str) -> Vec<&str> {
            self.events
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, j)| j.as_str())
                .collect()
        }
    }

    impl Guest for Fake {
        fn reg(&mut self, reg: Reg) -> u64 {
            self.regs.get(&reg_key(reg)).copied().unwrap_or(0)
        }
        fn read_virt(&mut self, gva: u64, len: u32) -> Result<Vec<u8>, HostError> {
            let at = gva.checked_sub(BUF).ok_or(HostError::NotMapped)? as usize;
            let end = at + len as usize;
            if end > self.mem.len() {
                return Err(HostError::NotMapped);
            }
            Ok(self.mem[at..end].to_vec())
        }
        fn set_breakpoint(&mut self, bp: Breakpoint) -> Result<u8, HostError> {
            if self.refuse {
                return Err(HostError::NotGranted);
            }
            assert_eq!((bp.kind, bp.len), (BreakpointKind::Execute, 1));
            self.slots.push(Some(bp.gva));
            Ok((self.slots.len() - 1) as u8)
        }
        fn clear_breakpoint(&mut self, slot: u8) -> Result<(), HostError> {
            self.slots[slot as usize] = None;
            Ok(())
        }
        fn counter_add(&mut self, key: &str, delta: i64) -> i64 {
            assert_eq!(key, COUNTER);
            self.counter += delta;
            self.counter
        }
        fn emit(&mut self, kind: &str, json: &str) {
            self.events.push((kind.into(), json.into()));
        }
        fn log(&mut self, _level: LogLevel, msg: &str) {
            self.logs.push(msg.into());
        }
    }

    fn tracer(pairs: &[(&str, &str)]) -> SyscallTracer {
        SyscallTracer::init(&pairs.iter().copied().collect())
            .unwrap()
            .0
    }

    fn lstar(value: u64) -> MsrExit {
        MsrExit {
            index: MSR_LSTAR,
            direction: Direction::Write,
            value,
            reason: MsrReason::Filtered,
        }
    }

    fn at(rip: u64) -> Exit {
        Exit {
            vcpu: 0,
            seq: 0,
            rip,
        }
    }

    fn bp(slot: u8) -> DebugExit {
        DebugExit {
            cause: DebugCause::HwBreakpoint,
            slot: Some(slot),
            dr6: 1 << slot,
            dr7: 0,
        }
    }

    fn single_step() -> DebugExit {
        DebugExit {
            cause: DebugCause::SingleStep,
            slot: None,
            dr6: 0x4000,
            dr7: 0,
        }
    }

    fn armed(pairs: &[(&str, &str)]) -> (SyscallTracer, Fake) {
        let mut t = tracer(pairs);
        let mut f = Fake::new();
        assert!(t.msr(&mut f, &at(0x1), &lstar(ENTRY)).is_decline());
        (t, f)
    }

    #[test]
    fn config_and_subscriptions() {
        let (t, s) = SyscallTracer::init(&Config::default()).unwrap();
        assert_eq!((t.step, t.max_payload, t.log), (0, 256, false));
        assert_eq!((s.msrs[0].first, s.msrs[0].last), (MSR_LSTAR, MSR_LSTAR));
        assert_eq!(s.events, EventSet::DEBUG);
        assert_eq!(s.capabilities, Capabilities::DEBUG);
        let t = tracer(&[("step", "5"), ("max-payload", "16"), ("log", "true")]);
        assert_eq!((t.step, t.max_payload, t.log), (5, 16, true));
        let err = |p: &[(&str, &str)]| {
            SyscallTracer::init(&p.iter().copied().collect())
                .err()
                .unwrap()
        };
        assert_eq!(err(&[("steps", "1")]), "unknown config key `steps`");
        assert!(err(&[("step", "x")]).contains("step"));
        assert!(err(&[("step", "20000")]).contains("10000"));
        assert!(err(&[("max-payload", "100000")]).contains("65536"));
    }

    #[test]
    fn lstar_write_sets_the_breakpoint() {
        let (t, f) = armed(&[]);
        assert_eq!(t.entry, Some((ENTRY, 0)));
        assert_eq!(f.slots, [Some(ENTRY)]);
        assert_eq!(
            f.events("breakpoint"),
            [r#"{"gva":18446744071563120640,"slot":0,"rip":1}"#]
        );
        // Reads, other MSRs and the same value again change nothing.
        let (mut t, mut f) = armed(&[]);
        let read = MsrExit {
            direction: Direction::Read,
            ..lstar(0)
        };
        assert!(t.msr(&mut f, &at(1), &read).is_decline());
        assert!(t
            .msr(
                &mut f,
                &at(1),
                &MsrExit {
                    index: 0x10,
                    ..lstar(5)
                }
            )
            .is_decline());
        assert!(t.msr(&mut f, &at(1), &lstar(ENTRY)).is_decline());
        assert_eq!(f.slots, [Some(ENTRY)]);
        // A new entry moves the breakpoint.
        assert!(t.msr(&mut f, &at(1), &lstar(0x5000)).is_decline());
        assert_eq!(f.slots, [None, Some(0x5000)]);
        assert_eq!(t.entry, Some((0x5000, 1)));
    }

    #[test]
    fn refused_breakpoint_is_logged() {
        let mut t = tracer(&[]);
        let mut f = Fake::new();
        f.refuse = true;
        assert!(t.msr(&mut f, &at(1), &lstar(ENTRY)).is_decline());
        assert_eq!(t.entry, None);
        assert!(f.logs[0].contains("not-granted"), "{:?}", f.logs);
        // Without a breakpoint every debug exit is someone else's.
        assert!(t.debug(&mut f, &at(ENTRY), &bp(0)).is_decline());
    }

    #[test]
    fn hits_become_syscall_events() {
        let (mut t, mut f) = armed(&[("log", "true")]);
        f.set(Reg::Rax, 2);
        assert_eq!(t.debug(&mut f, &at(ENTRY), &bp(0)), Verdict::resume());
        f.set(Reg::Rax, 1);
        f.set(Reg::Rdi, BUF);
        f.set(Reg::Rsi, 16);
        assert_eq!(t.debug(&mut f, &at(ENTRY), &bp(0)), Verdict::resume());
        f.set(Reg::Rax, 99);
        assert_eq!(t.debug(&mut f, &at(ENTRY), &bp(0)), Verdict::resume());
        assert_eq!(
            f.events("syscall"),
            [
                format!(r#"{{"n":1,"nr":2,"name":"getpid","rdi":0,"rsi":0,"rip":{ENTRY}}}"#),
                format!(
                    r#"{{"n":2,"nr":1,"name":"write","rdi":{BUF},"rsi":16,"data":"task init pid 1\n","truncated":false,"rip":{ENTRY}}}"#
                ),
                format!(r#"{{"n":3,"nr":99,"name":"unknown","rdi":{BUF},"rsi":16,"rip":{ENTRY}}}"#),
            ]
        );
        assert_eq!(
            f.logs[2],
            r#"syscall-tracer: #2 write(0xffffffff801031c0, 0x10) "task init pid 1\n""#
        );
        // Another policy's breakpoint, or a single step nobody asked for.
        assert!(t.debug(&mut f, &at(0x77), &bp(1)).is_decline());
        assert!(t.debug(&mut f, &at(0x77), &single_step()).is_decline());
        assert_eq!(f.counter, 3);
    }

    #[test]
    fn write_payload_is_capped_and_errors_reported() {
        let (mut t, mut f) = armed(&[("max-payload", "4")]);
        f.set(Reg::Rax, 1);
        f.set(Reg::Rdi, BUF);
        f.set(Reg::Rsi, 16);
        t.debug(&mut f, &at(ENTRY), &bp(0));
        f.set(Reg::Rdi, 0x1000);
        t.debug(&mut f, &at(ENTRY), &bp(0));
        let e = f.events("syscall");
        assert!(
            e[0].contains(r#""data":"task","truncated":true"#),
            "{}",
            e[0]
        );
        assert!(e[1].contains(r#""error":"not-mapped""#), "{}", e[1]);
    }

    #[test]
    fn first_hit_steps_n_instructions() {
        let (mut t, mut f) = armed(&[("step", "3")]);
        f.set(Reg::Rax, 2);
        let step = Verdict::Handled(vec![Action::Step]);
        assert_eq!(t.debug(&mut f, &at(ENTRY), &bp(0)), step);
        assert_eq!(t.debug(&mut f, &at(ENTRY + 8), &single_step()), step);
        assert_eq!(t.debug(&mut f, &at(ENTRY + 12), &single_step()), step);
        assert_eq!(
            t.debug(&mut f, &at(ENTRY + 18), &single_step()),
            Verdict::resume()
        );
        assert_eq!(t.stepping, Stepping::Done);
        // Later hits are not stepped, and stray single steps are declined.
        assert_eq!(t.debug(&mut f, &at(ENTRY), &bp(0)), Verdict::resume());
        assert!(t.debug(&mut f, &at(ENTRY), &single_step()).is_decline());
        let rips: Vec<_> = f.events("step");
        assert_eq!(
            rips,
            [
                r#"{"i":1,"rip":18446744071563120640}"#,
                r#"{"i":2,"rip":18446744071563120648}"#,
                r#"{"i":3,"rip":18446744071563120652}"#
            ]
        );
        assert_eq!(f.events("syscall").len(), 2);
    }
}

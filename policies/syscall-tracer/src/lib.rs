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

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::linux_syscalls::x86_64_syscall;
use wasmvisor_policy_sdk::{
    export_policy, host, Action, Breakpoint, BreakpointKind, Capabilities, Config, DebugCause,
    DebugExit, Direction, EventSet, Exit, MsrExit, Policy, Reg, Subscriptions, Verdict,
};

/// IA32_LSTAR: the 64-bit SYSCALL entry point.
const MSR_LSTAR: u32 = 0xc000_0082;
/// The shared counter of breakpoint hits.
const COUNTER: &str = "syscalls";

/// Whose system-call numbers the guest uses (`names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abi {
    /// minios (examples/guests/README.md): `write(buf, len)` is 1.
    Minios,
    /// Linux x86-64: `write(fd, buf, len)` is 1, names from the SDK's
    /// table of the kernel's syscall ABI.
    Linux,
}

impl Abi {
    fn name(self, nr: u64) -> &'static str {
        match self {
            Abi::Minios => match nr {
                1 => "write",
                2 => "getpid",
                3 => "yield",
                _ => "unknown",
            },
            Abi::Linux => x86_64_syscall(nr).unwrap_or("unknown"),
        }
    }

    /// The buffer and length of a `write`.
    fn write_buffer(self, rdi: u64, rsi: u64, rdx: u64) -> (u64, u64) {
        match self {
            Abi::Minios => (rdi, rsi),
            Abi::Linux => (rsi, rdx),
        }
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
    abi: Abi,
    /// The entry point and the breakpoint slot on it.
    entry: Option<(u64, u8)>,
    stepping: Stepping,
}

impl SyscallTracer {
    fn msr(&mut self, ev: &Exit, msr: &MsrExit) -> Verdict {
        if msr.index != MSR_LSTAR || msr.direction != Direction::Write {
            return Verdict::Decline;
        }
        let gva = msr.value;
        if let Some((old, slot)) = self.entry {
            if old == gva {
                return Verdict::Decline;
            }
            if let Err(e) = host::clear_breakpoint(slot) {
                host::warn(&format!(
                    "syscall-tracer: clearing slot {slot}: {}",
                    e.name()
                ));
            }
            self.entry = None;
        }
        let bp = Breakpoint {
            kind: BreakpointKind::Execute,
            gva,
            len: 1,
        };
        match host::set_breakpoint(bp) {
            Ok(slot) => {
                self.entry = Some((gva, slot));
                let json = Object::new()
                    .hex("gva", gva)
                    .u64("slot", u64::from(slot))
                    .hex("rip", ev.rip)
                    .finish();
                host::emit("breakpoint", &json);
                host::info(&format!(
                    "syscall-tracer: IA32_LSTAR = {gva:#x}: execute breakpoint in slot {slot}"
                ));
            }
            Err(e) => host::error(&format!(
                "syscall-tracer: cannot set a breakpoint at IA32_LSTAR {gva:#x}: {}",
                e.name()
            )),
        }
        // KVM stores the value: the guest's kernel set it.
        Verdict::Decline
    }

    /// One system call: the breakpoint on the entry fired.
    fn hit(&mut self, ev: &Exit) -> Verdict {
        let n = host::counter_add(COUNTER, 1);
        let (nr, rdi, rsi) = (
            host::get_reg(Reg::Rax),
            host::get_reg(Reg::Rdi),
            host::get_reg(Reg::Rsi),
        );
        let name = self.abi.name(nr);
        let mut json = Object::new()
            .i64("n", n)
            .u64("nr", nr)
            .str("name", name)
            .hex("rdi", rdi)
            .hex("rsi", rsi);
        let mut line = format!("syscall-tracer: #{n} {name}({rdi:#x}, {rsi:#x})");
        if name == "write" {
            let rdx = match self.abi {
                Abi::Linux => host::get_reg(Reg::Rdx),
                Abi::Minios => 0,
            };
            let (buf, size) = self.abi.write_buffer(rdi, rsi, rdx);
            let len = u32::try_from(size.min(u64::from(self.max_payload))).unwrap_or(0);
            match host::read_virt(buf, len) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    line.push_str(&format!(" {text:?}"));
                    json = json
                        .str("data", &text)
                        .bool("truncated", size > u64::from(len));
                }
                Err(e) => {
                    line.push_str(&format!(" (buffer unreadable: {})", e.name()));
                    json = json.str("error", e.name());
                }
            }
        }
        host::emit("syscall", &json.hex("rip", ev.rip).finish());
        if self.log {
            host::info(&line);
        }
        if self.stepping == Stepping::Idle && self.step > 0 {
            self.stepping = Stepping::Active(0);
            return self.step_once(ev);
        }
        Verdict::resume()
    }

    /// Records the instruction at `ev.rip` and executes it alone, or ends
    /// stepping once `step` instructions ran.
    fn step_once(&mut self, ev: &Exit) -> Verdict {
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
            .hex("rip", ev.rip)
            .finish();
        host::emit("step", &json);
        Verdict::Handled(vec![Action::Step])
    }

    fn debug(&mut self, ev: &Exit, d: &DebugExit) -> Verdict {
        match d.cause {
            DebugCause::SingleStep if matches!(self.stepping, Stepping::Active(_)) => {
                self.step_once(ev)
            }
            DebugCause::HwBreakpoint => match self.entry {
                Some((gva, slot))
                    if d.slot == Some(slot) || (d.slot.is_none() && ev.rip == gva) =>
                {
                    self.hit(ev)
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
        config.check_keys(&["step", "max-payload", "log", "names"])?;
        let abi = match config.get("names").unwrap_or("minios") {
            "minios" => Abi::Minios,
            "linux" => Abi::Linux,
            other => {
                return Err(format!(
                    "config key `names`: `{other}` is neither minios nor linux"
                ))
            }
        };
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
            abi,
            entry: None,
            stepping: Stepping::Idle,
        };
        Ok((tracer, subs))
    }

    fn on_msr(&mut self, ev: &Exit, msr: MsrExit) -> Verdict {
        self.msr(ev, &msr)
    }

    fn on_debug(&mut self, ev: &Exit, debug: DebugExit) -> Verdict {
        self.debug(ev, &debug)
    }
}

export_policy!(SyscallTracer);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, FakeHost, Harness};
    use wasmvisor_policy_sdk::{ExitKind, LogLevel};

    const ENTRY: u64 = 0xffff_ffff_8010_1000;
    /// minios's first `write` buffer, at GPA `BUF_GPA`.
    const BUF: u64 = 0xffff_ffff_8010_31c0;
    const BUF_GPA: u64 = 0x1031c0;
    const TEXT: &[u8] = b"task init pid 1\n";

    fn tracer(pairs: &[(&str, &str)]) -> SyscallTracer {
        SyscallTracer::init(&pairs.iter().copied().collect())
            .unwrap()
            .0
    }

    /// The tracer on a host holding the buffer, before the guest wrote
    /// IA32_LSTAR.
    fn loaded(pairs: &[(&str, &str)]) -> Harness<SyscallTracer> {
        let h = Harness::<SyscallTracer>::new(pairs).unwrap();
        h.host()
            .map_phys(BUF_GPA, TEXT)
            .map_virt(BUF, BUF_GPA, TEXT.len() as u64)
            .set_reg(Reg::Rip, 1);
        h
    }

    fn lstar(value: u64) -> ExitKind {
        exit::wrmsr(MSR_LSTAR, value)
    }

    /// The tracer after the guest programmed its entry point.
    fn armed(pairs: &[(&str, &str)]) -> Harness<SyscallTracer> {
        let mut h = loaded(pairs);
        assert!(h.exit(lstar(ENTRY)).is_decline());
        h
    }

    /// A system call: the breakpoint in slot 0 fires at the entry.
    fn syscall(h: &mut Harness<SyscallTracer>, nr: u64, rdi: u64, rsi: u64) -> Verdict {
        h.host()
            .set_reg(Reg::Rax, nr)
            .set_reg(Reg::Rdi, rdi)
            .set_reg(Reg::Rsi, rsi);
        h.exit_at(ENTRY, exit::hw_breakpoint(0))
    }

    fn execute(gva: u64) -> Breakpoint {
        Breakpoint {
            kind: BreakpointKind::Execute,
            gva,
            len: 1,
        }
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
        let err = |p: &[(&str, &str)]| Harness::<SyscallTracer>::new(p).unwrap_err();
        assert_eq!(err(&[("steps", "1")]), "unknown config key `steps`");
        assert!(err(&[("step", "x")]).contains("step"));
        assert!(err(&[("step", "20000")]).contains("10000"));
        assert!(err(&[("max-payload", "100000")]).contains("65536"));
    }

    #[test]
    fn lstar_write_sets_the_breakpoint() {
        let h = armed(&[]);
        assert_eq!(h.policy().entry, Some((ENTRY, 0)));
        assert_eq!(
            h.host().breakpoints(),
            [Some(execute(ENTRY)), None, None, None]
        );
        assert_eq!(
            h.host().events_of("breakpoint"),
            [r#"{"gva":"0xffffffff80101000","slot":0,"rip":"0x1"}"#]
        );
        // Reads, other MSRs and the same value again change nothing.
        let mut h = armed(&[]);
        assert!(h.exit(exit::rdmsr(MSR_LSTAR)).is_decline());
        assert!(h.exit(exit::wrmsr(0x10, 5)).is_decline());
        assert!(h.exit(lstar(ENTRY)).is_decline());
        assert_eq!(h.host().events_of("breakpoint").len(), 1);
        // A new entry moves the breakpoint: the old slot is cleared first,
        // so the host hands the same slot out again.
        assert!(h.exit(lstar(0x5000)).is_decline());
        assert_eq!(
            h.host().breakpoints(),
            [Some(execute(0x5000)), None, None, None]
        );
        assert_eq!(h.policy().entry, Some((0x5000, 0)));
        assert_eq!(h.host().events_of("breakpoint").len(), 2);
    }

    #[test]
    fn refused_breakpoint_is_logged() {
        // Not granted `debug`.
        let mut h = Harness::<SyscallTracer>::with_host(FakeHost::new(), &[]).unwrap();
        assert!(h.exit(lstar(ENTRY)).is_decline());
        assert_eq!(h.policy().entry, None);
        let logs = h.host().logs();
        assert_eq!(logs[0].level, LogLevel::Error);
        assert!(logs[0].msg.contains("not-granted"), "{logs:?}");
        // Without a breakpoint every debug exit is someone else's.
        assert!(h.exit_at(ENTRY, exit::hw_breakpoint(0)).is_decline());
    }

    #[test]
    fn hits_become_syscall_events() {
        let mut h = armed(&[("log", "true")]);
        assert_eq!(syscall(&mut h, 2, 0, 0), Verdict::resume());
        assert_eq!(syscall(&mut h, 1, BUF, 16), Verdict::resume());
        assert_eq!(syscall(&mut h, 99, BUF, 16), Verdict::resume());
        assert_eq!(
            h.host().events_of("syscall"),
            [
                format!(
                    r#"{{"n":1,"nr":2,"name":"getpid","rdi":"0x0","rsi":"0x0","rip":"{ENTRY:#x}"}}"#
                ),
                format!(
                    r#"{{"n":2,"nr":1,"name":"write","rdi":"{BUF:#x}","rsi":"0x10","data":"task init pid 1\n","truncated":false,"rip":"{ENTRY:#x}"}}"#
                ),
                format!(
                    r#"{{"n":3,"nr":99,"name":"unknown","rdi":"{BUF:#x}","rsi":"0x10","rip":"{ENTRY:#x}"}}"#
                ),
            ]
        );
        assert_eq!(
            h.host().logs()[2].msg,
            r#"syscall-tracer: #2 write(0xffffffff801031c0, 0x10) "task init pid 1\n""#
        );
        // Another policy's breakpoint, or a single step nobody asked for.
        assert!(h.exit_at(0x77, exit::hw_breakpoint(1)).is_decline());
        assert!(h.exit_at(0x77, exit::single_step()).is_decline());
        assert_eq!(h.host().counter(COUNTER), Some(3));
    }

    #[test]
    fn linux_names_and_write_arguments() {
        let mut h = armed(&[("names", "linux")]);
        h.host().set_reg(Reg::Rdx, 4);
        // openat(AT_FDCWD, path, ...), then write(1, BUF, 4).
        assert_eq!(syscall(&mut h, 257, 0xffff_ff9c, BUF), Verdict::resume());
        assert_eq!(syscall(&mut h, 1, 1, BUF), Verdict::resume());
        assert_eq!(syscall(&mut h, 59, 0, 0), Verdict::resume());
        assert_eq!(syscall(&mut h, 400, 0, 0), Verdict::resume());
        let events = h.host().events_of("syscall");
        let names: Vec<&str> = ["openat", "write", "execve", "unknown"].to_vec();
        for (e, name) in events.iter().zip(names) {
            assert!(e.contains(&format!(r#""name":"{name}""#)), "{e}");
        }
        assert!(
            events[1].contains(r#""data":"task","truncated":false"#),
            "{}",
            events[1]
        );
        let bad = Harness::<SyscallTracer>::new(&[("names", "bsd")]).unwrap_err();
        assert!(bad.contains("neither minios nor linux"), "{bad}");
    }

    #[test]
    fn the_count_is_shared_by_every_vcpu() {
        let mut cpu0 = armed(&[]);
        // vCPU 1 of the same VM: the grant of `debug` is the VM's.
        let host1 = cpu0.host().for_vcpu(1);
        let mut cpu1 = Harness::<SyscallTracer>::with_host(host1, &[]).unwrap();
        assert!(cpu1.exit(lstar(ENTRY)).is_decline());
        syscall(&mut cpu0, 2, 0, 0);
        syscall(&mut cpu1, 2, 0, 0);
        syscall(&mut cpu0, 2, 0, 0);
        let events = cpu0.host().events();
        let hits: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "syscall")
            .map(|e| (e.vcpu, e.json.split(',').next().unwrap_or_default()))
            .collect();
        assert_eq!(hits, [(0, r#"{"n":1"#), (1, r#"{"n":2"#), (0, r#"{"n":3"#)]);
    }

    #[test]
    fn write_payload_is_capped_and_errors_reported() {
        let mut h = armed(&[("max-payload", "4")]);
        syscall(&mut h, 1, BUF, 16);
        syscall(&mut h, 1, 0x1000, 16);
        let e = h.host().events_of("syscall");
        assert!(
            e[0].contains(r#""data":"task","truncated":true"#),
            "{}",
            e[0]
        );
        assert!(e[1].contains(r#""error":"not-mapped""#), "{}", e[1]);
    }

    #[test]
    fn first_hit_steps_n_instructions() {
        let mut h = armed(&[("step", "3")]);
        let step = Verdict::Handled(vec![Action::Step]);
        assert_eq!(syscall(&mut h, 2, 0, 0), step);
        assert_eq!(h.exit_at(ENTRY + 8, exit::single_step()), step);
        assert_eq!(h.exit_at(ENTRY + 12, exit::single_step()), step);
        assert_eq!(
            h.exit_at(ENTRY + 18, exit::single_step()),
            Verdict::resume()
        );
        assert_eq!(h.policy().stepping, Stepping::Done);
        // Later hits are not stepped, and stray single steps are declined.
        assert_eq!(syscall(&mut h, 2, 0, 0), Verdict::resume());
        assert!(h.exit_at(ENTRY, exit::single_step()).is_decline());
        assert_eq!(
            h.host().events_of("step"),
            [
                r#"{"i":1,"rip":"0xffffffff80101000"}"#,
                r#"{"i":2,"rip":"0xffffffff80101008"}"#,
                r#"{"i":3,"rip":"0xffffffff8010100c"}"#
            ]
        );
        assert_eq!(h.host().events_of("syscall").len(), 2);
    }
}

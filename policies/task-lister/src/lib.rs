//! Lists the guest kernel's tasks by walking its task list through the
//! guest's own page tables.
//!
//! The lister finds the kernel's data from the kernel's own state, as a
//! memory-forensics tool does: the kernel writes the GVA of its per-cpu
//! area to IA32_GS_BASE; the per-cpu area's first field is the GVA of the
//! global task-list head, which holds the GVA of the first task; each task
//! links to the next. Every GVA is read through the guest's page tables
//! (`read-virt`) and translated (`translate`) for the report. The walk runs
//! when the kernel has finished its set-up, at its WRMSR of IA32_LSTAR
//! (and/or at its first HLT), and emits one `task` event per task.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::{
    export_policy, host, parse_u64, Config, Direction, EventSet, Exit, MsrExit, Policy, SegmentReg,
    Subscriptions, Verdict,
};

/// IA32_GS_BASE: the kernel's per-cpu area.
const MSR_GS_BASE: u32 = 0xc000_0101;
/// IA32_LSTAR: written late in the kernel's set-up.
const MSR_LSTAR: u32 = 0xc000_0082;

/// Where the fields sit, in bytes (defaults: minios, see
/// examples/guests/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Per-cpu area: GVA of the task-list head.
    head: u64,
    /// Per-cpu area: GVA of the running task.
    current: u64,
    /// Task: pid (u64).
    pid: u64,
    /// Task: state (u64).
    state: u64,
    /// Task: name (NUL-padded bytes).
    name: u64,
    /// Task name length.
    name_len: u64,
    /// Task: GVA of the next task, 0 ends the list.
    next: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            head: 0x00,
            current: 0x08,
            pid: 0x00,
            state: 0x08,
            name: 0x10,
            name_len: 16,
            next: 0x20,
        }
    }
}

impl Layout {
    /// Bytes to read for one task.
    fn task_len(&self) -> u64 {
        [
            self.pid + 8,
            self.state + 8,
            self.next + 8,
            self.name + self.name_len,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

fn state_name(state: u64) -> &'static str {
    match state {
        0 => "ready",
        1 => "running",
        _ => "unknown",
    }
}

/// One task as read from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Task {
    gva: u64,
    gpa: u64,
    pid: u64,
    state: u64,
    name: String,
}

/// Why the walk stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// A `next` of 0.
    Complete,
    /// A task already listed came round again.
    Cycle(u64),
    /// `max-tasks` tasks were listed.
    Cap,
    /// A GVA did not read or translate.
    Error(String),
}

/// The result of one walk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Walk {
    percpu: u64,
    /// GVA of the task-list head.
    head: u64,
    /// GVA of the running task, if it could be read.
    current: Option<u64>,
    tasks: Vec<Task>,
    end: End,
}

fn u64_at(bytes: &[u8], offset: u64) -> u64 {
    let at = offset as usize;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn read_u64(gva: u64) -> Result<u64, String> {
    host::read_virt(gva, 8)
        .map(|b| u64_at(&b, 0))
        .map_err(|e| format!("read {gva:#x}: {}", e.name()))
}

/// Walks the task list from the per-cpu area at `percpu`.
fn walk(percpu: u64, layout: &Layout, max: usize) -> Result<Walk, String> {
    let head = read_u64(percpu.wrapping_add(layout.head))?;
    let current = read_u64(percpu.wrapping_add(layout.current)).ok();
    let mut out = Walk {
        percpu,
        head,
        current,
        tasks: Vec::new(),
        end: End::Complete,
    };
    let mut gva = match read_u64(head) {
        Ok(first) => first,
        Err(e) => {
            out.end = End::Error(e);
            return Ok(out);
        }
    };
    let mut seen = BTreeSet::new();
    let len = layout.task_len() as u32;
    while gva != 0 {
        if !seen.insert(gva) {
            out.end = End::Cycle(gva);
            break;
        }
        if out.tasks.len() >= max {
            out.end = End::Cap;
            break;
        }
        let read = host::read_virt(gva, len)
            .map_err(|e| format!("read task {gva:#x}: {}", e.name()))
            .and_then(|bytes| {
                let gpa = host::translate(gva)
                    .map_err(|e| format!("translate task {gva:#x}: {}", e.name()))?;
                Ok((bytes, gpa))
            });
        let (bytes, gpa) = match read {
            Ok(r) => r,
            Err(e) => {
                out.end = End::Error(e);
                break;
            }
        };
        let raw_name = &bytes[layout.name as usize..(layout.name + layout.name_len) as usize];
        let name_end = raw_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw_name.len());
        out.tasks.push(Task {
            gva,
            gpa,
            pid: u64_at(&bytes, layout.pid),
            state: u64_at(&bytes, layout.state),
            name: String::from_utf8_lossy(&raw_name[..name_end]).into_owned(),
        });
        gva = u64_at(&bytes, layout.next);
    }
    Ok(out)
}

#[derive(Debug)]
struct TaskLister {
    at_lstar: bool,
    at_hlt: bool,
    max_tasks: usize,
    log: bool,
    layout: Layout,
    /// The value the kernel wrote to IA32_GS_BASE.
    gs_base: Option<u64>,
    /// The HLT listing ran.
    listed_at_hlt: bool,
}

impl TaskLister {
    /// Lists the tasks now, `when` naming the trigger. Returns false when
    /// the kernel has no per-cpu area yet.
    fn list(&mut self, ev: &Exit, when: &str) -> bool {
        let percpu = match self.gs_base {
            Some(base) => base,
            None => host::get_segment(SegmentReg::Gs).base,
        };
        if percpu == 0 {
            host::debug(&format!(
                "task-lister: no per-cpu area (GS base 0) at {when}"
            ));
            return false;
        }
        let walk = match walk(percpu, &self.layout, self.max_tasks) {
            Ok(w) => w,
            Err(e) => {
                let json = Object::new()
                    .str("when", when)
                    .hex("percpu", percpu)
                    .u64("count", 0)
                    .str("end", "error")
                    .str("error", &e)
                    .finish();
                host::emit("task-list", &json);
                host::warn(&format!("task-lister: {e}"));
                return true;
            }
        };
        for (i, t) in walk.tasks.iter().enumerate() {
            let json = Object::new()
                .u64("index", i as u64)
                .u64("pid", t.pid)
                .str("state", state_name(t.state))
                .u64("state_raw", t.state)
                .str("name", &t.name)
                .hex("gva", t.gva)
                .hex("gpa", t.gpa)
                .bool("current", walk.current == Some(t.gva))
                .str("when", when)
                .finish();
            host::emit("task", &json);
            if self.log {
                host::info(&json);
            }
        }
        let mut summary = Object::new()
            .str("when", when)
            .hex("rip", ev.rip)
            .hex("percpu", walk.percpu)
            .hex("head", walk.head)
            .u64("count", walk.tasks.len() as u64);
        summary = match &walk.end {
            End::Complete => summary.str("end", "complete"),
            End::Cap => summary.str("end", "cap"),
            End::Cycle(gva) => summary.str("end", "cycle").hex("cycle_at", *gva),
            End::Error(e) => summary.str("end", "error").str("error", e),
        };
        let summary = summary.finish();
        host::emit("task-list", &summary);
        if self.log {
            host::info(&summary);
        }
        match &walk.end {
            End::Complete => {}
            End::Cap => host::warn(&format!(
                "task-lister: stopped after {} tasks",
                self.max_tasks
            )),
            End::Cycle(gva) => host::warn(&format!(
                "task-lister: the task list loops back to {gva:#x}"
            )),
            End::Error(e) => host::warn(&format!("task-lister: {e}")),
        }
        true
    }

    fn msr(&mut self, ev: &Exit, msr: &MsrExit) -> Verdict {
        if msr.direction == Direction::Write {
            match msr.index {
                MSR_GS_BASE => self.gs_base = Some(msr.value),
                MSR_LSTAR if self.at_lstar => {
                    self.list(ev, "lstar");
                }
                _ => {}
            }
        }
        // KVM performs the access: the guest's kernel made it.
        Verdict::Decline
    }

    fn hlt(&mut self, ev: &Exit) -> Verdict {
        if self.at_hlt && !self.listed_at_hlt {
            self.listed_at_hlt = self.list(ev, "hlt");
        }
        // The vCPU halts as it asked.
        Verdict::Decline
    }
}

impl Policy for TaskLister {
    const NAME: &'static str = "task-lister";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "lists the guest's tasks by walking its task list through its page tables";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["at", "max-tasks", "log", "offset.*", "name-len"])?;
        let (mut at_lstar, mut at_hlt) = (false, false);
        for at in config.all("at") {
            for part in at.split(',') {
                match part.trim() {
                    "lstar" => at_lstar = true,
                    "hlt" => at_hlt = true,
                    other => return Err(format!("config key `at`: `{other}` is not lstar or hlt")),
                }
            }
        }
        if !config.contains("at") {
            at_lstar = true;
        }
        let max_tasks = config.u64_or("max-tasks", 64)?;
        if !(1..=4096).contains(&max_tasks) {
            return Err("config key `max-tasks`: must be 1 to 4096".into());
        }
        let log = config.bool("log")?.unwrap_or(true);
        let mut layout = Layout::default();
        for (field, value) in config.prefixed("offset.") {
            let v = parse_u64(value).map_err(|e| format!("config key `offset.{field}`: {e}"))?;
            if v > 0x10000 {
                return Err(format!("config key `offset.{field}`: at most 0x10000"));
            }
            match field {
                "head" => layout.head = v,
                "current" => layout.current = v,
                "pid" => layout.pid = v,
                "state" => layout.state = v,
                "name" => layout.name = v,
                "next" => layout.next = v,
                other => {
                    return Err(format!(
                    "unknown config key `offset.{other}` (head, current, pid, state, name, next)"
                ))
                }
            }
        }
        layout.name_len = config.u64_or("name-len", layout.name_len)?;
        if !(1..=256).contains(&layout.name_len) {
            return Err("config key `name-len`: must be 1 to 256".into());
        }
        let mut subs = Subscriptions::new().msr(MSR_GS_BASE);
        if at_lstar {
            subs = subs.msr(MSR_LSTAR);
        }
        if at_hlt {
            subs = subs.events(EventSet::HLT);
        }
        let lister = TaskLister {
            at_lstar,
            at_hlt,
            max_tasks: max_tasks as usize,
            log,
            layout,
            gs_base: None,
            listed_at_hlt: false,
        };
        Ok((lister, subs))
    }

    fn on_msr(&mut self, ev: &Exit, msr: MsrExit) -> Verdict {
        self.msr(ev, &msr)
    }

    fn on_hlt(&mut self, ev: &Exit) -> Verdict {
        self.hlt(ev)
    }
}

export_policy!(TaskLister);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, FakeHost, Harness};
    use wasmvisor_policy_sdk::{LogLevel, Reg, Segment};

    const KBASE: u64 = 0xffff_ffff_8000_0000;
    const PERCPU: u64 = KBASE + 0x103000;

    fn put64(f: &FakeHost, gva: u64, v: u64) {
        f.put_virt(gva, &v.to_le_bytes());
    }

    /// Writes the task in `slot` of minios's task array; returns its GVA.
    fn task(f: &FakeHost, slot: u64, pid: u64, state: u64, name: &str, next: u64) -> u64 {
        let gva = PERCPU + 0x80 + slot * 0x28;
        put64(f, gva, pid);
        put64(f, gva + 8, state);
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        f.put_virt(gva + 0x10, &n);
        put64(f, gva + 0x20, next);
        gva
    }

    /// minios's data page (GPA 0x103000, mapped at KBASE + GPA): the
    /// per-cpu area, the list head and four tasks.
    fn minios() -> FakeHost {
        let f = FakeHost::new();
        f.map_ram(0x103000, 0x1000)
            .map_virt(PERCPU, 0x103000, 0x1000)
            .set_reg(Reg::Rip, 0x42);
        let (init, logger, shell, netd) =
            (PERCPU + 0x80, PERCPU + 0xa8, PERCPU + 0xd0, PERCPU + 0xf8);
        put64(&f, PERCPU, PERCPU + 0x40);
        put64(&f, PERCPU + 8, init);
        put64(&f, PERCPU + 0x40, init);
        task(&f, 0, 1, 1, "init", shell);
        task(&f, 1, 108, 0, "logger", 0);
        task(&f, 2, 42, 0, "shell", netd);
        task(&f, 3, 73, 0, "netd", logger);
        f
    }

    fn lister(pairs: &[(&str, &str)]) -> Result<(TaskLister, Subscriptions), String> {
        TaskLister::init(&pairs.iter().copied().collect())
    }

    fn on_minios(pairs: &[(&str, &str)]) -> Harness<TaskLister> {
        Harness::with_host(minios(), pairs).unwrap()
    }

    fn walk_minios(f: &FakeHost, max: usize) -> Result<Walk, String> {
        f.run(|| walk(PERCPU, &Layout::default(), max))
    }

    fn names(w: &Walk) -> Vec<(&str, u64)> {
        w.tasks.iter().map(|t| (t.name.as_str(), t.pid)).collect()
    }

    #[test]
    fn config_and_subscriptions() {
        let (l, s) = lister(&[]).unwrap();
        assert!(l.at_lstar && !l.at_hlt && l.log);
        assert_eq!((l.max_tasks, l.layout), (64, Layout::default()));
        let msrs: Vec<_> = s.msrs.iter().map(|m| m.first).collect();
        assert_eq!(msrs, [MSR_GS_BASE, MSR_LSTAR]);
        assert!(s.events.is_empty() && s.capabilities.is_empty());

        let (l, s) = lister(&[("at", "hlt"), ("log", "false"), ("max-tasks", "8")]).unwrap();
        assert!(!l.at_lstar && l.at_hlt && !l.log && l.max_tasks == 8);
        assert_eq!(s.msrs.len(), 1);
        assert_eq!(s.events, EventSet::HLT);
        let (l, _) = lister(&[("at", "lstar,hlt")]).unwrap();
        assert!(l.at_lstar && l.at_hlt);

        let (l, _) = lister(&[("offset.next", "0x30"), ("name-len", "32")]).unwrap();
        assert_eq!((l.layout.next, l.layout.name_len), (0x30, 32));
        assert_eq!(l.layout.task_len(), 0x38);
        assert_eq!(Layout::default().task_len(), 0x28);
    }

    #[test]
    fn config_errors() {
        let err = |p: &[(&str, &str)]| lister(p).err().unwrap();
        assert_eq!(err(&[("when", "x")]), "unknown config key `when`");
        assert!(err(&[("at", "boot")]).contains("lstar or hlt"));
        assert!(err(&[("max-tasks", "0")]).contains("max-tasks"));
        assert!(err(&[("offset.prev", "8")]).contains("offset.prev"));
        assert!(err(&[("offset.pid", "x")]).contains("offset.pid"));
        assert!(err(&[("offset.pid", "0x20000")]).contains("at most"));
        assert!(err(&[("name-len", "0")]).contains("name-len"));
    }

    #[test]
    fn walks_minios_in_list_order() {
        let w = walk_minios(&minios(), 64).unwrap();
        assert_eq!(
            names(&w),
            [("init", 1), ("shell", 42), ("netd", 73), ("logger", 108)]
        );
        assert_eq!(w.end, End::Complete);
        assert_eq!(w.head, PERCPU + 0x40);
        assert_eq!(w.current, Some(PERCPU + 0x80));
        assert_eq!(w.tasks[0].gpa, 0x103080);
        assert_eq!(w.tasks[1].gva, PERCPU + 0xd0);
        assert_eq!(w.tasks[0].state, 1);
    }

    #[test]
    fn cycles_caps_and_holes() {
        let f = minios();
        put64(&f, PERCPU + 0xa8 + 0x20, PERCPU + 0xd0); // logger -> shell
        let w = walk_minios(&f, 64).unwrap();
        assert_eq!(w.tasks.len(), 4);
        assert_eq!(w.end, End::Cycle(PERCPU + 0xd0));

        let w = walk_minios(&minios(), 2).unwrap();
        assert_eq!(names(&w), [("init", 1), ("shell", 42)]);
        assert_eq!(w.end, End::Cap);

        let f = minios();
        put64(&f, PERCPU + 0xf8 + 0x20, 0xdead_0000); // netd -> unmapped
        let w = walk_minios(&f, 64).unwrap();
        assert_eq!(w.tasks.len(), 3);
        assert_eq!(w.end, End::Error("read task 0xdead0000: not-mapped".into()));

        let err = minios().run(|| walk(0x1000, &Layout::default(), 64));
        assert!(err.unwrap_err().contains("read 0x1000"));

        // An empty list, and a full 16-byte name without a NUL.
        let f = minios();
        put64(&f, PERCPU + 0x40, 0);
        let w = walk_minios(&f, 64).unwrap();
        assert!(w.tasks.is_empty() && w.end == End::Complete);
        let f = minios();
        f.put_virt(PERCPU + 0x80 + 0x10, b"0123456789abcdef");
        let w = walk_minios(&f, 64).unwrap();
        assert_eq!(w.tasks[0].name, "0123456789abcdef");
    }

    #[test]
    fn lstar_write_lists_the_tasks_seen_through_gs_base() {
        let mut h = on_minios(&[]);
        assert!(h.exit(exit::wrmsr(MSR_GS_BASE, PERCPU)).is_decline());
        assert!(h.host().events().is_empty());
        assert!(h
            .exit(exit::wrmsr(MSR_LSTAR, KBASE + 0x101000))
            .is_decline());
        let tasks = h.host().events_of("task");
        assert_eq!(tasks.len(), 4);
        assert_eq!(
            tasks[0],
            format!(
                r#"{{"index":0,"pid":1,"state":"running","state_raw":1,"name":"init","gva":"{:#x}","gpa":"{:#x}","current":true,"when":"lstar"}}"#,
                PERCPU + 0x80,
                0x103080
            )
        );
        assert!(tasks[3].contains(r#""pid":108,"state":"ready","state_raw":0,"name":"logger""#));
        assert_eq!(
            h.host().events_of("task-list"),
            [format!(
                r#"{{"when":"lstar","rip":"0x42","percpu":"{PERCPU:#x}","head":"{:#x}","count":4,"end":"complete"}}"#,
                PERCPU + 0x40
            )]
        );
        // Each task (and the summary) is also a JSON log line at info.
        let logs = h.host().logs();
        let info: Vec<_> = logs.iter().filter(|l| l.level == LogLevel::Info).collect();
        assert_eq!(info.len(), 5);
        assert_eq!(info[0].msg, tasks[0]);
    }

    #[test]
    fn hlt_lists_once_and_falls_back_to_the_gs_segment() {
        let mut h = on_minios(&[("at", "hlt"), ("log", "false")]);
        // No GS base anywhere: nothing to list (another vCPU halting early).
        assert!(h.exit(exit::hlt()).is_decline());
        assert!(h.host().events().is_empty() && !h.policy().listed_at_hlt);
        assert_eq!(h.host().take_logs()[0].level, LogLevel::Debug);
        let gs = Segment {
            selector: 0,
            base: PERCPU,
            limit: 0xffff_ffff,
            attributes: 0,
            unusable: false,
        };
        h.host().set_segment(SegmentReg::Gs, gs);
        assert!(h.exit(exit::wrmsr(MSR_LSTAR, 1)).is_decline());
        assert!(h.host().events().is_empty());
        assert!(h.exit(exit::hlt()).is_decline());
        assert!(h.exit(exit::hlt()).is_decline());
        let tasks = h.host().events_of("task");
        assert_eq!(tasks.len(), 4);
        assert!(tasks[0].contains(r#""when":"hlt""#));
        assert!(h.host().logs().is_empty());
    }

    #[test]
    fn unreadable_per_cpu_area_is_reported() {
        let mut h = on_minios(&[]);
        h.exit(exit::wrmsr(MSR_GS_BASE, 0x5000));
        h.exit(exit::wrmsr(MSR_LSTAR, 1));
        assert!(h.host().events_of("task").is_empty());
        assert_eq!(
            h.host().events_of("task-list"),
            [
                r#"{"when":"lstar","percpu":"0x5000","count":0,"end":"error","error":"read 0x5000: not-mapped"}"#
            ]
        );
        assert!(h.host().logs().iter().any(|l| l.level == LogLevel::Warn));
    }
}

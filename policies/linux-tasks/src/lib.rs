//! Lists the guest Linux kernel's tasks, read through the guest's page
//! tables once a console line says the kernel is up.
//!
//! The walk starts at `init_task` (pid 0, `swapper`) and follows
//! `task_struct.tasks`, a circular `list_head` whose `next` points at the
//! `tasks` member of the next task, until it is back at `init_task`. The
//! addresses and offsets come from the VM's kernel profile.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::kernel::{member, symbol, Failure};
use wasmvisor_policy_sdk::{
    export_policy, host, Config, Exit, IoExit, LineTrigger, Policy, Subscriptions, Verdict,
};

/// `TASK_COMM_LEN`.
const COMM_LEN: u32 = 16;
/// The counter that makes the walk once per VM, not once per vCPU.
const WALKED: &str = "walked";

/// `len` bytes at `gva`; the error names `what`.
fn read(gva: u64, len: u32, what: &str) -> Result<Vec<u8>, String> {
    host::read_virt(gva, len).map_err(|e| format!("read {what} at {gva:#x}: {}", e.name()))
}

fn read_u32(gva: u64, what: &str) -> Result<u32, String> {
    let b = read(gva, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u64(gva: u64, what: &str) -> Result<u64, String> {
    let b = read(gva, 8, what)?;
    Ok(u64::from_le_bytes([
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
    ]))
}

/// Where `task_struct`'s members lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    init_task: u64,
    tasks: u64,
    pid: u64,
    tgid: u64,
    comm: u64,
    /// `__state` (u32, Linux 5.14 on) or `state` (long, before).
    state: u64,
    real_parent: u64,
}

impl Layout {
    fn from_profile() -> Result<Layout, Failure> {
        let state = match member("task_struct.__state") {
            Err(Failure::Other(_)) => member("task_struct.state")?,
            found => found?,
        };
        Ok(Layout {
            init_task: symbol("init_task")?,
            tasks: member("task_struct.tasks")?,
            pid: member("task_struct.pid")?,
            tgid: member("task_struct.tgid")?,
            comm: member("task_struct.comm")?,
            state,
            real_parent: member("task_struct.real_parent")?,
        })
    }
}

/// One task as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Task {
    gva: u64,
    pid: i32,
    tgid: i32,
    comm: String,
    state: u32,
    ppid: i32,
}

impl Task {
    fn read(l: &Layout, gva: u64) -> Result<Task, String> {
        let at = |offset: u64| gva.wrapping_add(offset);
        let comm = read(at(l.comm), COMM_LEN, "task_struct.comm")?;
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let parent = read_u64(at(l.real_parent), "task_struct.real_parent")?;
        Ok(Task {
            gva,
            pid: read_u32(at(l.pid), "task_struct.pid")? as i32,
            tgid: read_u32(at(l.tgid), "task_struct.tgid")? as i32,
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
            state: read_u32(at(l.state), "task_struct.state")?,
            ppid: read_u32(parent.wrapping_add(l.pid), "the parent's pid")? as i32,
        })
    }

    fn json(&self) -> String {
        Object::new()
            .i64("pid", self.pid.into())
            .i64("tgid", self.tgid.into())
            .str("comm", &self.comm)
            .u64("state", self.state.into())
            .i64("ppid", self.ppid.into())
            .hex("task", self.gva)
            .finish()
    }
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Back at `init_task`.
    Complete,
    /// `max` tasks listed.
    Max,
    /// A read failed.
    Error(String),
}

/// Walks the task list from `init_task`, calling `each` on every task in
/// list order, at most `max` of them.
fn walk(l: &Layout, max: u64, mut each: impl FnMut(&Task)) -> (u64, End) {
    let mut gva = l.init_task;
    let mut count = 0;
    loop {
        if count == max {
            return (count, End::Max);
        }
        let task = match Task::read(l, gva) {
            Ok(task) => task,
            Err(e) => return (count, End::Error(e)),
        };
        each(&task);
        count += 1;
        match read_u64(gva.wrapping_add(l.tasks), "task_struct.tasks.next") {
            Ok(next) => gva = next.wrapping_sub(l.tasks),
            Err(e) => return (count, End::Error(e)),
        }
        if gva == l.init_task {
            return (count, End::Complete);
        }
    }
}

/// The policy: one trigger, one walk.
#[derive(Debug)]
pub struct LinuxTasks {
    trigger: LineTrigger,
    max: u64,
}

impl LinuxTasks {
    /// Walks the list and emits the events.
    fn list(&self) {
        let layout = match Layout::from_profile() {
            Ok(layout) => layout,
            Err(failure) => {
                let json = Object::new().str("error", failure.message()).finish();
                host::emit("linux-tasks", &json);
                host::warn(&format!("linux-tasks: {}", failure.message()));
                return;
            }
        };
        let (count, end) = walk(&layout, self.max, |task| {
            host::emit("linux-task", &task.json());
        });
        let summary = Object::new().u64("count", count);
        let summary = match &end {
            End::Complete => summary.str("end", "complete"),
            End::Max => summary.str("end", "max"),
            End::Error(e) => summary.str("end", "error").str("error", e),
        };
        host::emit("linux-tasks", &summary.finish());
        match end {
            End::Complete => host::info(&format!("linux-tasks: {count} tasks")),
            End::Max => host::warn(&format!("linux-tasks: stopped at max={} tasks", self.max)),
            End::Error(e) => host::warn(&format!("linux-tasks: {count} tasks, then {e}")),
        }
    }
}

impl Policy for LinuxTasks {
    const NAME: &'static str = "linux-tasks";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "lists the guest Linux kernel's tasks at a console line";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["at", "max"])?;
        let trigger = LineTrigger::from_config(config)?;
        let max = config.u64_or("max", 1024)?;
        if !(1..=65_536).contains(&max) {
            return Err("config key `max`: must be 1 to 65536".into());
        }
        let subs = trigger.subscribe(Subscriptions::new());
        Ok((LinuxTasks { trigger, max }, subs))
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        // Once per VM: the first vCPU to see the line walks.
        if self.trigger.once_per_vm(&io, WALKED) {
            self.list();
        }
        Verdict::Decline // the console still prints
    }
}

export_policy!(LinuxTasks);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, FakeHost, Harness, KernelProfile};
    use wasmvisor_policy_sdk::LogLevel;

    /// `init_task` in the kernel image, and the GPA behind it.
    const INIT: u64 = 0xffff_ffff_82c1_4940;
    const INIT_GPA: u64 = 0x2c1_4940;
    /// Where the other tasks live: the direct map.
    const HEAP: u64 = 0xffff_8880_0400_0000;
    const HEAP_GPA: u64 = 0x400_0000;
    /// `task_struct` offsets of Linux 6.1.
    const TASKS: u64 = 0x890;
    const PID: u64 = 0x970;
    const TGID: u64 = 0x974;
    const COMM: u64 = 0xba0;
    const STATE: u64 = 0x18;
    const PARENT: u64 = 0x980;

    fn profile(state: &str) -> KernelProfile {
        KernelProfile::new()
            .symbol("init_task", INIT)
            .member("task_struct.tasks", TASKS)
            .member("task_struct.pid", PID)
            .member("task_struct.tgid", TGID)
            .member("task_struct.comm", COMM)
            .member(state, STATE)
            .member("task_struct.real_parent", PARENT)
    }

    /// Writes a task at `gva`: its list link points at `next`'s `tasks`.
    #[allow(clippy::too_many_arguments)]
    fn task(
        f: &FakeHost,
        gva: u64,
        pid: i32,
        tgid: i32,
        comm: &str,
        state: u32,
        parent: u64,
        next: u64,
    ) {
        f.put_virt(gva + PID, &pid.to_le_bytes())
            .put_virt(gva + TGID, &tgid.to_le_bytes())
            .put_virt(gva + STATE, &state.to_le_bytes())
            .put_virt(gva + PARENT, &parent.to_le_bytes())
            .put_virt(gva + TASKS, &(next + TASKS).to_le_bytes());
        // Cut to 16 bytes, and then without a NUL: the policy stops there.
        let mut name = [0u8; 16];
        let n = comm.len().min(16);
        name[..n].copy_from_slice(&comm.as_bytes()[..n]);
        f.put_virt(gva + COMM, &name);
    }

    /// `init_task`, `init` (1), `kthreadd` (2) and a thread of `init`.
    fn booted() -> FakeHost {
        let f = FakeHost::new();
        f.map_ram(INIT_GPA & !0xfff, 0x2000)
            .map_virt(INIT & !0xfff, INIT_GPA & !0xfff, 0x2000)
            .map_ram(HEAP_GPA, 0x4000)
            .map_virt(HEAP, HEAP_GPA, 0x4000)
            .set_kernel_profile(profile("task_struct.__state"));
        let (init, kthreadd, thread) = (HEAP, HEAP + 0x1000, HEAP + 0x2000);
        task(&f, INIT, 0, 0, "swapper/0", 0, INIT, init);
        task(&f, init, 1, 1, "systemd", 1, INIT, kthreadd);
        task(&f, kthreadd, 2, 2, "kthreadd", 1, INIT, thread);
        task(&f, thread, 77, 1, "a-very-long-name-cut", 0x402, init, INIT);
        f
    }

    fn print(h: &mut Harness<LinuxTasks>, text: &str) {
        for b in text.bytes() {
            assert!(h.exit(exit::io_write(0x3f8, 1, u32::from(b))).is_decline());
        }
    }

    #[test]
    fn config() {
        let h = Harness::<LinuxTasks>::new(&[]).unwrap();
        assert_eq!(h.policy().max, 1024);
        assert_eq!(h.policy().trigger.text(), Some("Memory:"));
        let s = h.subscriptions();
        assert_eq!((s.ports[0].first, s.ports[0].last), (0x3f8, 0x3f8));
        let h = Harness::<LinuxTasks>::new(&[("max", "4096"), ("at", "Run /init")]).unwrap();
        assert_eq!(h.policy().max, 4096);
        let err = |pairs| Harness::<LinuxTasks>::new(pairs).unwrap_err();
        assert!(err(&[("max", "0")]).contains("1 to 65536"));
        assert!(err(&[("max", "x")]).contains("max"));
        assert_eq!(err(&[("every", "1")]), "unknown config key `every`");
    }

    #[test]
    fn lists_every_task_once_at_the_line() {
        let mut h = Harness::<LinuxTasks>::with_host(booted(), &[("at", "Run /init")]).unwrap();
        print(&mut h, "[    0.5] Memory: 2005756K/2096632K available\n");
        assert!(h.host().events().is_empty());
        print(&mut h, "[    1.2] Run /init as init process\r\n");
        assert_eq!(
            h.host().events_of("linux-task"),
            [
                r#"{"pid":0,"tgid":0,"comm":"swapper/0","state":0,"ppid":0,"task":"0xffffffff82c14940"}"#,
                r#"{"pid":1,"tgid":1,"comm":"systemd","state":1,"ppid":0,"task":"0xffff888004000000"}"#,
                r#"{"pid":2,"tgid":2,"comm":"kthreadd","state":1,"ppid":0,"task":"0xffff888004001000"}"#,
                r#"{"pid":77,"tgid":1,"comm":"a-very-long-name","state":1026,"ppid":1,"task":"0xffff888004002000"}"#,
            ]
        );
        assert_eq!(
            h.host().events_of("linux-tasks"),
            [r#"{"count":4,"end":"complete"}"#]
        );
        let logs = h.host().logs();
        assert_eq!(
            (logs[0].level, logs[0].msg.as_str()),
            (LogLevel::Info, "linux-tasks: 4 tasks")
        );
        print(&mut h, "Run /init as init process\n");
        assert_eq!(h.host().events().len(), 5);
    }

    #[test]
    fn older_kernels_call_it_state_and_the_walk_is_bounded() {
        let f = booted();
        f.set_kernel_profile(profile("task_struct.state"));
        let mut h = Harness::<LinuxTasks>::with_host(f, &[("at", "init"), ("max", "2")]).unwrap();
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(h.host().events_of("linux-task").len(), 2);
        assert_eq!(
            h.host().events_of("linux-tasks"),
            [r#"{"count":2,"end":"max"}"#]
        );
        assert_eq!(h.host().logs()[0].level, LogLevel::Warn);
    }

    #[test]
    fn a_broken_link_ends_the_walk() {
        let f = booted();
        // kthreadd's next points nowhere mapped.
        f.put_virt(HEAP + 0x1000 + TASKS, &0xdead_0000_u64.to_le_bytes());
        let mut h = Harness::<LinuxTasks>::with_host(f, &[("at", "init")]).unwrap();
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(h.host().events_of("linux-task").len(), 3);
        assert_eq!(
            h.host().events_of("linux-tasks"),
            [format!(
                r#"{{"count":3,"end":"error","error":"read task_struct.comm at {:#x}: not-mapped"}}"#,
                0xdead_0000_u64 - TASKS + COMM
            )]
        );
    }

    #[test]
    fn without_a_profile_an_error_is_reported_once_per_vm() {
        let cpu0 = booted();
        cpu0.clear_kernel_profile();
        let cpu1 = cpu0.for_vcpu(1);
        let mut h0 = Harness::<LinuxTasks>::with_host(cpu0, &[("at", "init")]).unwrap();
        let mut h1 = Harness::<LinuxTasks>::with_host(cpu1, &[("at", "init")]).unwrap();
        for _ in 0..2 {
            h0.exit(exit::io_read(0x3f8, 1));
            h1.exit(exit::io_read(0x3f8, 1));
        }
        assert_eq!(h0.host().events(), h1.host().events(),);
        assert_eq!(
            h0.host().events_of("linux-tasks"),
            [r#"{"error":"no kernel profile (boot with --kernel or pass --kernel-profile)"}"#]
        );
        assert!(h0.host().events_of("linux-task").is_empty());
        // A profile without task_struct is named.
        let f = booted();
        f.set_kernel_profile(KernelProfile::new().symbol("init_task", INIT));
        let mut h = Harness::<LinuxTasks>::with_host(f, &[("at", "init")]).unwrap();
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            h.host().events_of("linux-tasks"),
            [r#"{"error":"the kernel profile has no member `task_struct.state`"}"#]
        );
    }
}

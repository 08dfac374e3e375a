//! Checks the guest Linux kernel's system-call table once a console line
//! says the kernel is up, then write-protects it and reports every write
//! to it; optionally the kernel text too.
//!
//! The table is `sys_call_table`, found with the VM's kernel profile.
//! Entry `nr` should point at `__x64_sys_NAME`, `NAME` being the name of
//! system call `nr` ([`X86_64_SYSCALLS`](wasmvisor_policy_sdk::linux_syscalls::X86_64_SYSCALLS)), or at `sys_ni_syscall` for a
//! number with no call behind it; an entry pointing anywhere else is
//! hooked. The table's pages are then write-protected (GVA translated to
//! GPA through the guest's page tables): every later write arrives as a
//! memory violation, is reported with the writer's RIP named from the
//! kernel's symbols, and is allowed.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::linux_syscalls::X86_64_SYSCALLS;

use wasmvisor_policy_sdk::json::{self, Object};
use wasmvisor_policy_sdk::kernel::{symbol, symbolized, Failure};
use wasmvisor_policy_sdk::{
    export_policy, host, Action, Capabilities, Config, EventSet, Exit, GpaRange, HostError, IoExit,
    LineTrigger, MemAccess, MemViolation, Policy, ProtectRequest, Protection, Subscriptions,
    Verdict,
};

const PAGE: u64 = 4096;
/// Most table slots looked at.
const MAX_SLOTS: u64 = 1024;
/// Most kernel-text pages protected (256 MiB).
const MAX_TEXT_PAGES: u64 = 65_536;
/// Most errors listed in one event.
const MAX_ERRORS: usize = 16;
/// Counter: the first instance to see the trigger checks and protects.
const CHECKED: &str = "checked";
/// Counter: the pages are protected; other vCPUs' instances learn them
/// at their first violation.
const ARMED: &str = "armed";

/// The address of `name`, `None` if the profile lacks it or fails.
fn maybe_symbol(name: &str) -> Option<u64> {
    host::kernel_symbol(name).ok().flatten()
}

/// What a protected run of pages holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Table,
    Text,
}

/// Guest-virtual pages `[gva, gva + len)` backed by `[gpa, gpa + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    gva: u64,
    gpa: u64,
    len: u64,
    kind: Kind,
}

impl Run {
    /// The GVA of `gpa`, if the run holds it.
    fn gva_of(&self, gpa: u64) -> Option<u64> {
        let offset = gpa.checked_sub(self.gpa)?;
        (offset < self.len).then(|| self.gva + offset)
    }
}

/// Translates the pages of `[start, end)` and joins neighbours into runs;
/// a page that does not translate is an error and left out.
fn runs(start: u64, end: u64, kind: Kind, errors: &mut Vec<String>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let mut page = start & !(PAGE - 1);
    while page < end {
        match host::translate(page) {
            Ok(gpa) => {
                let gpa = gpa & !(PAGE - 1);
                match out.last_mut() {
                    Some(r) if r.gva + r.len == page && r.gpa + r.len == gpa => r.len += PAGE,
                    _ => out.push(Run {
                        gva: page,
                        gpa,
                        len: PAGE,
                        kind,
                    }),
                }
            }
            Err(e) => errors.push(format!("translate {page:#x}: {}", e.name())),
        }
        page = match page.checked_add(PAGE) {
            Some(next) => next,
            None => break,
        };
    }
    out
}

/// `sys_call_table` and the entries it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    addr: u64,
    entries: Vec<u64>,
}

impl Table {
    /// Finds the table: its slots are the 8-byte words the profile names
    /// `sys_call_table+off` (at most 1024), up to the first zero word (a
    /// real entry never is 0, and kallsyms has no sizes: the padding
    /// after the table is still `sys_call_table+off`).
    fn find() -> Result<Table, Failure> {
        let addr = symbol("sys_call_table")?;
        let mut slots = 0;
        while slots < MAX_SLOTS {
            match host::kernel_symbolize(addr + 8 * slots) {
                Ok(Some((name, _))) if name == "sys_call_table" => slots += 1,
                Ok(_) => break,
                Err(HostError::Unsupported) => return Err(Failure::NoProfile),
                Err(e) => return Err(Failure::Other(format!("kernel-symbolize: {}", e.name()))),
            }
        }
        let bytes = host::read_virt(addr, (8 * slots) as u32).map_err(|e| {
            Failure::Other(format!("read sys_call_table at {addr:#x}: {}", e.name()))
        })?;
        let entries: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .take_while(|&entry| entry != 0)
            .collect();
        if entries.is_empty() {
            return Err(Failure::Other(format!(
                "sys_call_table at {addr:#x} has no entries"
            )));
        }
        Ok(Table { addr, entries })
    }

    fn end(&self) -> u64 {
        self.addr + 8 * self.entries.len() as u64
    }

    /// The number of the entry holding `gva`.
    fn nr_of(&self, gva: u64) -> Option<u64> {
        (gva >= self.addr && gva < self.end()).then(|| (gva - self.addr) / 8)
    }
}

/// The name of system call `nr` (`""` for a number without one).
fn name_of(nr: usize) -> &'static str {
    X86_64_SYSCALLS.get(nr).copied().unwrap_or("")
}

/// Whether `target` is a right entry for system call `nr`, given the
/// address of `sys_ni_syscall` (the x86-64 entry `__x64_sys_ni_syscall`,
/// or the plain function of kernels before 4.17).
fn expected(nr: usize, target: u64, ni: Option<u64>) -> bool {
    let want = match X86_64_SYSCALLS.get(nr) {
        Some(&"") => ni,
        // A call this kernel does not have points at sys_ni_syscall.
        Some(name) => maybe_symbol(&format!("__x64_sys_{name}"))
            .or_else(|| maybe_symbol(&format!("sys_{name}")))
            .or(ni),
        None => None,
    };
    match want {
        Some(addr) => addr == target,
        // A number past the embedded table (a newer kernel): any system
        // call's entry point will do.
        None => matches!(
            host::kernel_symbolize(target),
            Ok(Some((name, 0))) if ["__x64_sys_", "__ia32_sys_", "sys_"]
                .iter()
                .any(|p| name.starts_with(p))
        ),
    }
}

/// The pages guarded, and what went wrong finding them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    table: Table,
    runs: Vec<Run>,
    table_errors: Vec<String>,
    /// `_stext`, `_etext` and the errors, with `text=protect`.
    text: Option<(u64, u64, Vec<String>)>,
}

impl Layout {
    fn find(text: bool) -> Result<Layout, Failure> {
        let table = Table::find()?;
        let mut table_errors = Vec::new();
        let mut all = runs(table.addr, table.end(), Kind::Table, &mut table_errors);
        let text = text.then(|| {
            let mut errors = Vec::new();
            let bounds = symbol("_stext").and_then(|start| Ok((start, symbol("_etext")?)));
            let (start, end) = match bounds {
                Ok(bounds) => bounds,
                Err(failure) => {
                    errors.push(failure.message().to_string());
                    return (0, 0, errors);
                }
            };
            if end < start || (end - start) / PAGE >= MAX_TEXT_PAGES {
                errors.push(format!("_stext.._etext {start:#x}..{end:#x}: too large"));
                return (start, end, errors);
            }
            for run in runs(start, end, Kind::Text, &mut errors) {
                // A page shared with the table stays the table's.
                if !all
                    .iter()
                    .any(|r| r.gpa < run.gpa + run.len && run.gpa < r.gpa + r.len)
                {
                    all.push(run);
                }
            }
            (start, end, errors)
        });
        Ok(Layout {
            table,
            runs: all,
            table_errors,
            text,
        })
    }

    fn run_of(&self, gpa: u64) -> Option<(Run, u64)> {
        self.runs
            .iter()
            .find_map(|r| r.gva_of(gpa).map(|gva| (*r, gva)))
    }
}

/// Errors as a JSON array, at most [`MAX_ERRORS`] of them and then a
/// count of the rest.
fn errors_json(errors: &[String]) -> String {
    let mut shown: Vec<String> = errors
        .iter()
        .take(MAX_ERRORS)
        .map(|e| json::string(e))
        .collect();
    if errors.len() > MAX_ERRORS {
        shown.push(json::string(&format!(
            "... {} more",
            errors.len() - MAX_ERRORS
        )));
    }
    json::array(shown)
}

/// The policy.
#[derive(Debug)]
pub struct SyscallGuard {
    trigger: LineTrigger,
    /// `text=protect`: guard the kernel text as well.
    text: bool,
    /// What this instance knows is guarded.
    layout: Option<Layout>,
    /// This instance tried to learn the layout from another's arming.
    learned: bool,
}

impl SyscallGuard {
    /// At the trigger: checks the table, protects it (and the text) and
    /// reports.
    fn arm(&mut self) {
        let layout = match Layout::find(self.text) {
            Ok(layout) => layout,
            Err(failure) => {
                let json = Object::new().str("error", failure.message()).finish();
                host::emit("syscall-table", &json);
                host::warn(&format!("syscall-guard: {}", failure.message()));
                return;
            }
        };
        let table = &layout.table;
        let ni = maybe_symbol("__x64_sys_ni_syscall").or_else(|| maybe_symbol("sys_ni_syscall"));
        let mut hooked = 0u64;
        for (nr, &target) in table.entries.iter().enumerate() {
            if expected(nr, target, ni) {
                continue;
            }
            hooked += 1;
            let symbol = symbolized(target);
            let json = Object::new()
                .u64("nr", nr as u64)
                .str("name", name_of(nr))
                .hex("target", target)
                .str("symbol", &symbol)
                .finish();
            host::emit("syscall-hooked", &json);
            host::warn(&format!(
                "syscall-guard: system call {nr} ({}) is hooked: {target:#x} ({symbol})",
                name_of(nr)
            ));
        }

        let mut table_errors = layout.table_errors.clone();
        let mut text_errors = layout
            .text
            .as_ref()
            .map(|t| t.2.clone())
            .unwrap_or_default();
        let mut protected = Vec::new();
        let mut pages = [0u64; 2];
        for run in &layout.runs {
            let req = ProtectRequest {
                range: GpaRange {
                    base: run.gpa,
                    len: run.len,
                },
                mode: Protection::WriteProtect,
            };
            let (errors, count) = match run.kind {
                Kind::Table => (&mut table_errors, &mut pages[0]),
                Kind::Text => (&mut text_errors, &mut pages[1]),
            };
            match host::protect(req) {
                Ok(()) => {
                    *count += run.len / PAGE;
                    protected.push(*run);
                }
                Err(e) => errors.push(format!(
                    "protect {:#x}+{:#x}: {}",
                    run.gpa,
                    run.len,
                    e.name()
                )),
            }
        }

        let json = Object::new()
            .hex("table", table.addr)
            .u64("entries", table.entries.len() as u64)
            .u64("hooked", hooked)
            .u64("pages", pages[0])
            .raw("errors", &errors_json(&table_errors))
            .finish();
        host::emit("syscall-table", &json);
        let summary = format!(
            "syscall-guard: sys_call_table at {:#x}: {} entries, {hooked} hooked, {} pages write-protected",
            table.addr,
            table.entries.len(),
            pages[0]
        );
        if hooked == 0 && table_errors.is_empty() {
            host::info(&summary);
        } else {
            host::warn(&summary);
        }
        if let Some((start, end, _)) = &layout.text {
            let json = Object::new()
                .hex("start", *start)
                .hex("end", *end)
                .u64("pages", pages[1])
                .raw("errors", &errors_json(&text_errors))
                .finish();
            host::emit("kernel-text", &json);
            host::info(&format!(
                "syscall-guard: kernel text {start:#x}..{end:#x}: {} pages write-protected",
                pages[1]
            ));
        }
        for e in table_errors.iter().chain(&text_errors).take(MAX_ERRORS) {
            host::warn(&format!("syscall-guard: {e}"));
        }
        host::counter_add(ARMED, 1);
        self.layout = Some(Layout {
            runs: protected,
            ..layout
        });
    }

    /// On another vCPU than the one that armed: learns the same layout
    /// once the guard is armed (the pages are protected for the whole VM,
    /// so writes from any vCPU arrive).
    fn learn(&mut self) {
        if self.layout.is_some() || self.learned || host::counter_add(ARMED, 0) == 0 {
            return;
        }
        self.learned = true;
        self.layout = Layout::find(self.text).ok();
    }

    fn violation(&mut self, ev: &Exit, v: &MemViolation) -> Verdict {
        if v.access != MemAccess::Write {
            return Verdict::Decline;
        }
        self.learn();
        let Some(layout) = &self.layout else {
            return Verdict::Decline;
        };
        let Some((run, gva)) = layout.run_of(v.gpa) else {
            return Verdict::Decline;
        };
        let rip_symbol = symbolized(ev.rip);
        let json = Object::new().hex("gva", gva).hex("gpa", v.gpa);
        let (kind, json, what) = match run.kind {
            Kind::Table => {
                let nr = layout.table.nr_of(gva);
                let what = match nr {
                    Some(nr) => format!("sys_call_table[{nr}] ({})", name_of(nr as usize)),
                    None => "the sys_call_table page".into(),
                };
                let nr = nr.map_or("null".to_string(), |nr| nr.to_string());
                ("syscall-table-write", json.raw("nr", &nr), what)
            }
            Kind::Text => {
                let symbol = symbolized(gva);
                let what = format!("kernel text {symbol}");
                ("kernel-text-write", json.str("symbol", &symbol), what)
            }
        };
        let json = json
            .hex("rip", ev.rip)
            .str("rip_symbol", &rip_symbol)
            .hex("data", v.data)
            .u64("size", v.size.into())
            .finish();
        host::emit(kind, &json);
        host::warn(&format!(
            "syscall-guard: write of {} bytes ({:#x}) to {what} at {gva:#x} from rip {:#x} ({rip_symbol}): allowed",
            v.size, v.data, ev.rip
        ));
        // Report, then let the write land; the page stays protected.
        Verdict::Handled(vec![Action::Allow])
    }
}

impl Policy for SyscallGuard {
    const NAME: &'static str = "syscall-guard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "checks the guest Linux kernel's system-call table, write-protects it and reports writes";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["at", "text"])?;
        let trigger = LineTrigger::from_config(config)?;
        let text = match config.get("text") {
            None => false,
            Some("protect") => true,
            Some(other) => return Err(format!("config key `text`: `{other}` is not `protect`")),
        };
        let subs = trigger
            .subscribe(Subscriptions::new())
            .events(EventSet::MEM_VIOLATION)
            .capabilities(Capabilities::PROTECT_MEMORY);
        let guard = SyscallGuard {
            trigger,
            text,
            layout: None,
            learned: false,
        };
        Ok((guard, subs))
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        // Once per VM: the first vCPU to see the line checks and protects.
        if self.trigger.once_per_vm(&io, CHECKED) {
            self.arm();
        }
        Verdict::Decline // the console still prints
    }

    fn on_mem_violation(&mut self, ev: &Exit, violation: MemViolation) -> Verdict {
        self.violation(ev, &violation)
    }
}

export_policy!(SyscallGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, FakeHost, Harness, KernelProfile};
    use wasmvisor_policy_sdk::LogLevel;

    /// The kernel text, `_stext` to `_etext`, and the GPA behind it.
    const TEXT: u64 = 0xffff_ffff_8100_0000;
    const TEXT_GPA: u64 = 0x100_0000;
    const ETEXT: u64 = TEXT + 0x3800;
    /// `__x64_sys_ni_syscall` (and its alias `__ia32_sys_ni_syscall`).
    const NI: u64 = TEXT + 0x45c0;
    /// `__x64_sys_NAME` of system call `nr` lies at `CALLS + 0x40 * nr`.
    const CALLS: u64 = 0xffff_ffff_8110_0000;
    /// The read-only data holding `sys_call_table`, and its GPA.
    const RODATA: u64 = 0xffff_ffff_8200_0000;
    const RODATA_GPA: u64 = 0x200_0000;
    const TABLE: u64 = RODATA + 0x360;
    /// A module's function.
    const EVIL: u64 = 0xffff_ffff_c000_1000;

    fn call(nr: usize) -> u64 {
        CALLS + 0x40 * nr as u64
    }

    /// The right entry of each number in the embedded table.
    fn clean_entries() -> Vec<u64> {
        (0..X86_64_SYSCALLS.len())
            .map(|nr| match X86_64_SYSCALLS[nr] {
                "" => NI,
                _ => call(nr),
            })
            .collect()
    }

    /// A profile of the fake kernel; the symbol after the table lies
    /// `pad` slots past entry `entries - 1`.
    fn profile(entries: usize, pad: u64) -> KernelProfile {
        table_profile(entries, pad)
            .symbol("_stext", TEXT)
            .symbol("_etext", ETEXT)
    }

    /// [`profile`] without `_stext` and `_etext`.
    fn table_profile(entries: usize, pad: u64) -> KernelProfile {
        let mut p = KernelProfile::new()
            .symbol("__x64_sys_ni_syscall", NI)
            .symbol("__ia32_sys_ni_syscall", NI)
            .symbol("sys_ni_syscall", TEXT + 0x9_0000)
            .symbol("sys_call_table", TABLE)
            .symbol("vdso_mapping", TABLE + 8 * (entries as u64 + pad))
            .symbol("evil_write", EVIL)
            .symbol("__x64_sys_cachestat", call(451));
        for (nr, name) in X86_64_SYSCALLS.iter().enumerate() {
            if !name.is_empty() {
                p = p.symbol(&format!("__x64_sys_{name}"), call(nr));
            }
        }
        p
    }

    /// A fake kernel whose `sys_call_table` holds `entries`, then a zero.
    fn kernel(entries: &[u64]) -> FakeHost {
        let f = FakeHost::new();
        f.map_ram(TEXT_GPA, 0x4000)
            .map_virt(TEXT, TEXT_GPA, 0x4000)
            .map_ram(RODATA_GPA, 0x2000)
            .map_virt(RODATA, RODATA_GPA, 0x2000)
            .set_kernel_profile(profile(entries.len(), 3));
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        f.put_virt(TABLE, &bytes);
        f
    }

    /// The guard on `host`, granted protect-memory.
    fn guard(host: FakeHost, pairs: &[(&str, &str)]) -> Harness<SyscallGuard> {
        host.grant(Capabilities::PROTECT_MEMORY);
        Harness::with_host(host, pairs).unwrap()
    }

    fn print(h: &mut Harness<SyscallGuard>, text: &str) {
        for b in text.bytes() {
            assert!(h.exit(exit::io_write(0x3f8, 1, u32::from(b))).is_decline());
        }
    }

    fn protected(h: &Harness<SyscallGuard>) -> Vec<(u64, u64, Protection)> {
        let calls = h.host().protect_calls();
        calls
            .iter()
            .map(|p| (p.range.base, p.range.len, p.mode))
            .collect()
    }

    fn allow() -> Verdict {
        Verdict::handled(vec![Action::Allow])
    }

    #[test]
    fn the_embedded_table() {
        assert_eq!(X86_64_SYSCALLS.len(), 451);
        assert_eq!(
            (X86_64_SYSCALLS[0], X86_64_SYSCALLS[1], X86_64_SYSCALLS[60]),
            ("read", "write", "exit")
        );
        assert_eq!(X86_64_SYSCALLS[134], "");
        assert!(X86_64_SYSCALLS[335..424].iter().all(|n| n.is_empty()));
        assert_eq!(X86_64_SYSCALLS[450], "set_mempolicy_home_node");
    }

    #[test]
    fn config_and_subscriptions() {
        let h = Harness::<SyscallGuard>::new(&[]).unwrap();
        let s = h.subscriptions();
        assert_eq!((s.ports[0].first, s.ports[0].last), (0x3f8, 0x3f8));
        assert_eq!(s.events, EventSet::MEM_VIOLATION);
        assert_eq!(s.capabilities, Capabilities::PROTECT_MEMORY);
        assert!(s.protect.is_empty());
        assert!(!h.policy().text);
        assert_eq!(h.policy().trigger.text(), Some("Memory:"));
        let h = Harness::<SyscallGuard>::new(&[("text", "protect"), ("at", "init")]).unwrap();
        assert!(h.policy().text);
        let err = |pairs| Harness::<SyscallGuard>::new(pairs).unwrap_err();
        assert!(err(&[("text", "on")]).contains("`text`"));
        assert_eq!(
            err(&[("on-tamper", "deny")]),
            "unknown config key `on-tamper`"
        );
    }

    #[test]
    fn a_clean_table_is_checked_and_protected_at_the_line() {
        let mut h = guard(kernel(&clean_entries()), &[]);
        print(
            &mut h,
            "[    0.000000] Linux version 6.1.0\r\n[    0.01] Memory: 2005756K",
        );
        assert!(h.host().events().is_empty());
        print(&mut h, "/2096632K available\r\n");
        assert_eq!(
            h.host().events_of("syscall-table"),
            [r#"{"table":"0xffffffff82000360","entries":451,"hooked":0,"pages":2,"errors":[]}"#]
        );
        assert!(h.host().events_of("syscall-hooked").is_empty());
        assert_eq!(
            protected(&h),
            [(RODATA_GPA, 0x2000, Protection::WriteProtect)]
        );
        let logs = h.host().logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].level, LogLevel::Info);
        assert_eq!(
            logs[0].msg,
            "syscall-guard: sys_call_table at 0xffffffff82000360: 451 entries, 0 hooked, 2 pages write-protected"
        );
        // Once only.
        print(&mut h, "Memory: again\n");
        assert_eq!(h.host().events().len(), 1);
        assert_eq!(h.host().protect_calls().len(), 1);
    }

    #[test]
    fn hooked_entries_are_reported() {
        let mut entries = clean_entries();
        entries[0] = call(1); // read -> __x64_sys_write
        entries[134] = EVIL + 0x10; // an unused number
        entries.push(call(451)); // a newer kernel's call: fine
        entries.push(EVIL + 0x1000); // past the embedded table
        let mut h = guard(kernel(&entries), &[("at", "init")]);
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            h.host().events_of("syscall-hooked"),
            [
                r#"{"nr":0,"name":"read","target":"0xffffffff81100040","symbol":"__x64_sys_write+0x0"}"#,
                r#"{"nr":134,"name":"","target":"0xffffffffc0001010","symbol":"evil_write+0x10"}"#,
                r#"{"nr":452,"name":"","target":"0xffffffffc0002000","symbol":"evil_write+0x1000"}"#,
            ]
        );
        assert_eq!(
            h.host().events_of("syscall-table"),
            [r#"{"table":"0xffffffff82000360","entries":453,"hooked":3,"pages":2,"errors":[]}"#]
        );
        let logs = h.host().logs();
        assert!(logs.iter().all(|l| l.level == LogLevel::Warn));
        assert_eq!(
            logs[0].msg,
            "syscall-guard: system call 0 (read) is hooked: 0xffffffff81100040 (__x64_sys_write+0x0)"
        );
    }

    #[test]
    fn the_table_ends_at_its_last_slot_or_the_next_symbol() {
        // The next symbol right after the table, and no zero.
        let f = kernel(&clean_entries()[..10]);
        f.put_virt(TABLE + 80, &NI.to_le_bytes());
        f.set_kernel_profile(profile(10, 0));
        let mut h = guard(f, &[("at", "init")]);
        h.exit(exit::io_read(0x3f8, 1));
        let table = h.host().events_of("syscall-table");
        assert!(
            table[0].contains(r#""entries":10,"hooked":0,"pages":1"#),
            "{table:?}"
        );
        assert_eq!(
            protected(&h),
            [(RODATA_GPA, 0x1000, Protection::WriteProtect)]
        );
    }

    #[test]
    fn writes_to_the_table_are_reported_and_allowed() {
        let mut h = guard(kernel(&clean_entries()), &[("at", "init")]);
        // Nothing is guarded yet.
        assert!(h
            .exit(exit::mem_write(RODATA_GPA + 0x368, 8, 1))
            .is_decline());
        h.exit(exit::io_read(0x3f8, 1));
        h.host().take_logs();
        let v = h.exit_at(EVIL + 0x2a, exit::mem_write(RODATA_GPA + 0x368, 8, EVIL));
        assert_eq!(v, allow());
        // The same page, before the table.
        let v = h.exit(exit::mem_write(RODATA_GPA + 0x10, 4, 0x1234));
        assert_eq!(v, allow());
        assert_eq!(
            h.host().events_of("syscall-table-write"),
            [
                r#"{"gva":"0xffffffff82000368","gpa":"0x2000368","nr":1,"rip":"0xffffffffc000102a","rip_symbol":"evil_write+0x2a","data":"0xffffffffc0001000","size":8}"#,
                r#"{"gva":"0xffffffff82000010","gpa":"0x2000010","nr":null,"rip":"0xffffffffc000102a","rip_symbol":"evil_write+0x2a","data":"0x1234","size":4}"#,
            ]
        );
        let logs = h.host().logs();
        assert_eq!(logs[0].level, LogLevel::Warn);
        assert_eq!(
            logs[0].msg,
            "syscall-guard: write of 8 bytes (0xffffffffc0001000) to sys_call_table[1] (write) at 0xffffffff82000368 from rip 0xffffffffc000102a (evil_write+0x2a): allowed"
        );
        // A RIP below every symbol, another page, a read.
        let v = h.exit_at(0x1000, exit::mem_write(RODATA_GPA + 0x1ff8, 8, 0));
        assert_eq!(v, allow());
        assert!(h.host().events_of("syscall-table-write")[2].contains(r#""rip_symbol":"?""#));
        assert!(h.exit(exit::mem_write(TEXT_GPA, 1, 0xcc)).is_decline());
        assert!(h.exit(exit::mem_read(RODATA_GPA, 8)).is_decline());
    }

    #[test]
    fn another_vcpu_reports_once_the_guard_is_armed() {
        let cpu0 = kernel(&clean_entries());
        let cpu1 = cpu0.for_vcpu(1);
        let mut h0 = guard(cpu0, &[]);
        let mut h1 = guard(cpu1, &[]);
        let write = || exit::mem_write(RODATA_GPA + 0x360, 8, NI);
        assert!(h1.exit(write()).is_decline());
        print(&mut h0, "Memory: 1K\n");
        assert_eq!(h1.exit(write()), allow());
        let writes = h0.host().events_of("syscall-table-write");
        assert_eq!(writes.len(), 1);
        assert!(writes[0].contains(r#""nr":0"#));
        assert_eq!(h1.host().events()[writes.len()].vcpu, 1);
        assert_eq!(h0.host().protect_calls().len(), 1);
    }

    #[test]
    fn text_protect_guards_the_kernel_text_too() {
        let mut h = guard(
            kernel(&clean_entries()),
            &[("text", "protect"), ("at", "init")],
        );
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            protected(&h),
            [
                (RODATA_GPA, 0x2000, Protection::WriteProtect),
                (TEXT_GPA, 0x4000, Protection::WriteProtect)
            ]
        );
        assert_eq!(
            h.host().events_of("kernel-text"),
            [r#"{"start":"0xffffffff81000000","end":"0xffffffff81003800","pages":4,"errors":[]}"#]
        );
        let v = h.exit_at(EVIL, exit::mem_write(TEXT_GPA + 0x25c4, 1, 0xcc));
        assert_eq!(v, allow());
        assert_eq!(
            h.host().events_of("kernel-text-write"),
            [
                r#"{"gva":"0xffffffff810025c4","gpa":"0x10025c4","symbol":"_stext+0x25c4","rip":"0xffffffffc0001000","rip_symbol":"evil_write+0x0","data":"0xcc","size":1}"#
            ]
        );
    }

    #[test]
    fn failures_are_reported() {
        // Without the grant nothing is protected.
        let mut h = Harness::<SyscallGuard>::with_host(kernel(&clean_entries()), &[("at", "init")])
            .unwrap();
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            h.host().events_of("syscall-table"),
            [
                r#"{"table":"0xffffffff82000360","entries":451,"hooked":0,"pages":0,"errors":["protect 0x2000000+0x2000: not-granted"]}"#
            ]
        );
        assert!(h
            .exit(exit::mem_write(RODATA_GPA + 0x360, 8, 0))
            .is_decline());

        // Text that does not translate.
        let f = kernel(&clean_entries());
        f.set_kernel_profile(profile(451, 3).symbol("_etext", TEXT + 0x5000));
        let mut h = guard(f, &[("at", "init"), ("text", "protect")]);
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            h.host().events_of("kernel-text"),
            [
                r#"{"start":"0xffffffff81000000","end":"0xffffffff81005000","pages":4,"errors":["translate 0xffffffff81004000: not-mapped"]}"#
            ]
        );

        // A kernel whose text ends before it starts, and one without
        // `_stext`: the table is guarded all the same.
        for (etext, error) in [
            (
                TEXT - 1,
                "_stext.._etext 0xffffffff81000000..0xffffffff80ffffff: too large",
            ),
            (0, "the kernel profile has no symbol `_stext`"),
        ] {
            let f = kernel(&clean_entries());
            f.set_kernel_profile(match etext {
                0 => table_profile(451, 3),
                _ => profile(451, 3).symbol("_etext", etext),
            });
            let mut h = guard(f, &[("at", "init"), ("text", "protect")]);
            h.exit(exit::io_read(0x3f8, 1));
            let text = h.host().events_of("kernel-text");
            assert!(text[0].contains(error), "{text:?}");
            assert_eq!(
                protected(&h),
                [(RODATA_GPA, 0x2000, Protection::WriteProtect)]
            );
        }
    }

    #[test]
    fn without_a_profile_an_error_is_reported_once() {
        let f = kernel(&clean_entries());
        f.clear_kernel_profile();
        let mut h = guard(f, &[("at", "init")]);
        for _ in 0..3 {
            h.exit(exit::io_read(0x3f8, 1));
        }
        assert_eq!(
            h.host().events_of("syscall-table"),
            [r#"{"error":"no kernel profile (boot with --kernel or pass --kernel-profile)"}"#]
        );
        assert_eq!(h.host().events().len(), 1);
        assert!(h.host().protect_calls().is_empty());
        assert!(h
            .exit(exit::mem_write(RODATA_GPA + 0x360, 8, 0))
            .is_decline());
        // A profile without the table is named.
        let f = kernel(&clean_entries());
        f.set_kernel_profile(KernelProfile::new().symbol("_stext", TEXT));
        let mut h = guard(f, &[("at", "init")]);
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            h.host().events_of("syscall-table"),
            [r#"{"error":"the kernel profile has no symbol `sys_call_table`"}"#]
        );
    }
}

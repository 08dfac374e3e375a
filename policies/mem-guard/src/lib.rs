//! Write-protects the guest kernel's text and page tables and reports, or
//! denies, every write to them.
//!
//! The kernel's text and tables are found from the guest's own state: when
//! the kernel writes IA32_LSTAR (its system-call entry point), the guard
//! translates that GVA through the guest's page tables to the text page,
//! and walks the tables from CR3 to every page-table page reachable. Both
//! are write-protected; each write to them arrives as a memory violation
//! that is reported and denied, allowed, or let through for good. Explicit
//! GPA ranges can be guarded too, write-protected or no-access.

#![forbid(unsafe_code)]

#[cfg(test)]
mod minios;
mod walk;

use walk::{coalesce, Paging, PAGE};
use wasmvisor_policy_sdk::json::{self, Object};
use wasmvisor_policy_sdk::{
    export_policy, host, mask, Action, Capabilities, Config, Direction, EventSet, Exit, GpaRange,
    LogLevel, MemAccess, MemViolation, MsrExit, Policy, ProtectRequest, Protection, Reg,
    Subscriptions, Verdict,
};

/// IA32_LSTAR: the 64-bit SYSCALL entry point.
const MSR_LSTAR: u32 = 0xc000_0082;

/// What a write to a guarded page does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnTamper {
    /// The write is dropped (a read of a no-access page reads all-ones).
    Deny,
    /// The write lands; the page stays protected and reports the next one.
    Allow,
    /// The page loses its protection and the write lands; later accesses
    /// to that page are not seen.
    Unprotect,
}

impl OnTamper {
    fn action(self) -> Action {
        match self {
            OnTamper::Deny => Action::Deny,
            OnTamper::Allow => Action::Allow,
            OnTamper::Unprotect => Action::UnprotectRetry,
        }
    }

    fn name(self) -> &'static str {
        match self {
            OnTamper::Deny => "deny",
            OnTamper::Allow => "allow",
            OnTamper::Unprotect => "unprotect",
        }
    }
}

/// What a guarded range holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The page holding the system-call entry (and any after it).
    Text,
    /// A page-table page reachable from CR3.
    PageTable,
    /// A range from the config.
    Range,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::PageTable => "page-table",
            Kind::Range => "range",
        }
    }
}

fn mode_name(mode: Protection) -> &'static str {
    match mode {
        Protection::WriteProtect => "write-protect",
        Protection::NoAccess => "no-access",
        Protection::NoExecute => "no-execute",
    }
}

fn access_name(access: MemAccess) -> &'static str {
    match access {
        MemAccess::Read => "read",
        MemAccess::Write => "write",
        MemAccess::Execute => "execute",
    }
}

/// A guarded, page-aligned GPA range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    base: u64,
    len: u64,
    kind: Kind,
    mode: Protection,
}

impl Region {
    fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa - self.base < self.len
    }

    fn json(&self) -> String {
        Object::new()
            .hex("base", self.base)
            .u64("len", self.len)
            .str("kind", self.kind.name())
            .str("mode", mode_name(self.mode))
            .finish()
    }
}

#[derive(Debug)]
struct MemGuard {
    on_tamper: OnTamper,
    /// The answer to a read of a no-access page, if the operator gave one.
    read_value: Option<u64>,
    discover: bool,
    max_tables: usize,
    text_pages: u64,
    /// Guarded ranges, disjoint.
    regions: Vec<Region>,
    /// The LSTAR value discovery ran for.
    entry: Option<u64>,
}

/// Config ranges of one key, checked to be page-aligned.
fn page_ranges(config: &Config, key: &str) -> Result<Vec<(u64, u64)>, String> {
    let ranges = config.regions(key)?;
    for &(base, len) in &ranges {
        if base % PAGE != 0 || len % PAGE != 0 {
            return Err(format!(
                "config key `{key}`: {base:#x}+{len:#x} is not page-aligned (4 KiB)"
            ));
        }
    }
    Ok(ranges)
}

fn overlaps(a: &Region, b: &Region) -> bool {
    a.base < b.base + b.len && b.base < a.base + a.len
}

impl MemGuard {
    fn region_of(&self, gpa: u64) -> Option<Region> {
        self.regions.iter().copied().find(|r| r.contains(gpa))
    }

    fn covered(&self, page: u64) -> bool {
        self.region_of(page).is_some()
    }

    /// Forgets the page holding `gpa`: its protection was removed.
    fn forget_page(&mut self, gpa: u64) {
        let page = gpa & !(PAGE - 1);
        let mut kept = Vec::with_capacity(self.regions.len() + 1);
        for r in self.regions.drain(..) {
            if !r.contains(page) {
                kept.push(r);
                continue;
            }
            if page > r.base {
                kept.push(Region {
                    len: page - r.base,
                    ..r
                });
            }
            let end = r.base + r.len;
            if page + PAGE < end {
                kept.push(Region {
                    base: page + PAGE,
                    len: end - page - PAGE,
                    ..r
                });
            }
        }
        self.regions = kept;
    }

    /// Protects `pages` (write-protect) as `kind`, skipping pages already
    /// guarded. Returns the new regions and the failures.
    fn protect_pages(&mut self, pages: &[u64], kind: Kind, errors: &mut Vec<String>) {
        let fresh: Vec<u64> = pages
            .iter()
            .copied()
            .filter(|&p| !self.covered(p))
            .collect();
        for (base, len) in coalesce(&fresh) {
            let req = ProtectRequest {
                range: GpaRange { base, len },
                mode: Protection::WriteProtect,
            };
            match host::protect(req) {
                Ok(()) => self.regions.push(Region {
                    base,
                    len,
                    kind,
                    mode: Protection::WriteProtect,
                }),
                Err(e) => errors.push(format!(
                    "protect {} {base:#x}+{len:#x}: {}",
                    kind.name(),
                    e.name()
                )),
            }
        }
    }

    /// Finds and protects the kernel text (from the LSTAR value `entry`)
    /// and the page tables (from CR3).
    fn discover(&mut self, entry: u64) {
        self.entry = Some(entry);
        let cr3 = host::get_reg(Reg::Cr3);
        let paging = Paging::detect(
            host::get_reg(Reg::Cr0),
            host::get_reg(Reg::Cr4),
            host::get_reg(Reg::Efer),
        );
        let mut errors = Vec::new();

        let mut text = Vec::new();
        for i in 0..self.text_pages {
            let gva = (entry & !(PAGE - 1)).wrapping_add(i * PAGE);
            match host::translate(gva) {
                Ok(gpa) => text.push(gpa & !(PAGE - 1)),
                Err(e) => errors.push(format!("translate {gva:#x}: {}", e.name())),
            }
        }
        let tables = walk::table_pages(paging, cr3, self.max_tables);
        for (gpa, e) in &tables.unreadable {
            errors.push(format!("read table {gpa:#x}: {}", e.name()));
        }
        let table_pages: Vec<u64> = tables
            .pages
            .iter()
            .copied()
            .filter(|p| !text.contains(p))
            .collect();

        let before = self.regions.len();
        self.protect_pages(&text, Kind::Text, &mut errors);
        self.protect_pages(&table_pages, Kind::PageTable, &mut errors);

        let mut regions = self.regions.clone();
        regions.sort_by_key(|r| r.base);
        let json = Object::new()
            .str("trigger", "lstar")
            .hex("entry", entry)
            .hex("cr3", cr3)
            .str("paging", paging.name())
            .u64("tables", tables.pages.len() as u64)
            .bool("truncated", tables.truncated)
            .raw("ranges", &json::array(regions.iter().map(Region::json)))
            .raw(
                "errors",
                &json::array(errors.iter().map(|e| json::string(e))),
            )
            .finish();
        host::emit("protected", &json);

        let added: Vec<String> = self.regions[before..]
            .iter()
            .map(|r| format!("{} {:#x}+{:#x}", r.kind.name(), r.base, r.len))
            .collect();
        host::info(&format!(
                "mem-guard: syscall entry {entry:#x}, cr3 {cr3:#x} ({} paging, {} table pages{}): write-protected {}",
                paging.name(),
                tables.pages.len(),
                if tables.truncated { ", truncated" } else { "" },
                if added.is_empty() { "nothing".to_string() } else { added.join(", ") }
            ));
        for e in &errors {
            host::warn(&format!("mem-guard: {e}"));
        }
    }

    fn msr(&mut self, ev: &Exit, msr: &MsrExit) -> Verdict {
        if msr.index != MSR_LSTAR || msr.direction != Direction::Write || !self.discover {
            return Verdict::Decline;
        }
        match self.entry {
            None => self.discover(msr.value),
            Some(old) if old != msr.value => {
                let json = Object::new()
                    .hex("old", old)
                    .hex("new", msr.value)
                    .hex("rip", ev.rip)
                    .finish();
                host::emit("lstar-changed", &json);
                host::warn(&format!(
                    "mem-guard: IA32_LSTAR rewritten from {old:#x} to {:#x} at rip {:#x}",
                    msr.value, ev.rip
                ));
            }
            Some(_) => {}
        }
        // Let KVM store the value: the guest's own kernel set it.
        Verdict::Decline
    }

    fn violation(&mut self, ev: &Exit, v: &MemViolation) -> Verdict {
        let Some(region) = self.region_of(v.gpa) else {
            return Verdict::Decline;
        };
        let (action, verdict) = match (v.access, self.read_value) {
            (MemAccess::Read, Some(value)) => {
                (Action::CompleteRead(value & mask(v.size)), "read-value")
            }
            _ => (self.on_tamper.action(), self.on_tamper.name()),
        };
        let event = if v.access == MemAccess::Write {
            "tamper"
        } else {
            "access"
        };
        let json = Object::new()
            .hex("gpa", v.gpa)
            .hex("rip", ev.rip)
            .u64("size", u64::from(v.size))
            .hex("data", v.data)
            .str("access", access_name(v.access))
            .str("kind", region.kind.name())
            .str("verdict", verdict)
            .finish();
        host::emit(event, &json);
        let what = match v.access {
            MemAccess::Write => format!("write of {} bytes ({:#x})", v.size, v.data),
            other => format!("{} of {} bytes", access_name(other), v.size),
        };
        host::log(
            if v.access == MemAccess::Write {
                LogLevel::Warn
            } else {
                LogLevel::Info
            },
            &format!(
                "mem-guard: {event}: {what} at GPA {:#x} ({}) from rip {:#x}: {verdict}",
                v.gpa,
                region.kind.name(),
                ev.rip
            ),
        );
        if action == Action::UnprotectRetry {
            self.forget_page(v.gpa);
        }
        Verdict::Handled(vec![action])
    }
}

impl Policy for MemGuard {
    const NAME: &'static str = "mem-guard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "write-protects the kernel text and page tables and reports or denies tampering";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&[
            "on-tamper",
            "protect",
            "no-access",
            "read-value",
            "discover",
            "max-tables",
            "text-pages",
        ])?;
        let on_tamper = match config.get("on-tamper").unwrap_or("deny") {
            "deny" => OnTamper::Deny,
            "allow" => OnTamper::Allow,
            "unprotect" => OnTamper::Unprotect,
            other => {
                return Err(format!(
                    "config key `on-tamper`: `{other}` is not deny, allow or unprotect"
                ))
            }
        };
        let discover = config.bool("discover")?.unwrap_or(true);
        let max_tables = config.u64_or("max-tables", 64)?;
        if !(1..=4096).contains(&max_tables) {
            return Err("config key `max-tables`: must be 1 to 4096".into());
        }
        let text_pages = config.u64_or("text-pages", 1)?;
        if !(1..=256).contains(&text_pages) {
            return Err("config key `text-pages`: must be 1 to 256".into());
        }
        let mut regions: Vec<Region> = Vec::new();
        for (key, mode) in [
            ("protect", Protection::WriteProtect),
            ("no-access", Protection::NoAccess),
        ] {
            for (base, len) in page_ranges(config, key)? {
                let r = Region {
                    base,
                    len,
                    kind: Kind::Range,
                    mode,
                };
                if let Some(o) = regions.iter().find(|o| overlaps(o, &r)) {
                    return Err(format!(
                        "config key `{key}`: {base:#x}+{len:#x} overlaps {:#x}+{:#x}",
                        o.base, o.len
                    ));
                }
                regions.push(r);
            }
        }
        let read_value = config.u64("read-value")?;
        if read_value.is_some() && !regions.iter().any(|r| r.mode == Protection::NoAccess) {
            return Err(
                "config key `read-value`: only no-access pages are read-protected; add `no-access=BASE+LEN`"
                    .into(),
            );
        }
        if !discover && regions.is_empty() {
            return Err(
                "nothing to guard: discover=false and no `protect` or `no-access` range".into(),
            );
        }
        let mut subs = Subscriptions::new()
            .events(EventSet::MEM_VIOLATION)
            .capabilities(Capabilities::PROTECT_MEMORY);
        for r in &regions {
            subs = subs.protect(r.base, r.len, r.mode);
        }
        if discover {
            subs = subs.msr(MSR_LSTAR);
        }
        let guard = MemGuard {
            on_tamper,
            read_value,
            discover,
            max_tables: max_tables as usize,
            text_pages,
            regions,
            entry: None,
        };
        Ok((guard, subs))
    }

    fn on_msr(&mut self, ev: &Exit, msr: MsrExit) -> Verdict {
        self.msr(ev, &msr)
    }

    fn on_mem_violation(&mut self, ev: &Exit, violation: MemViolation) -> Verdict {
        self.violation(ev, &violation)
    }
}

export_policy!(MemGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minios::{self, KBASE};
    use wasmvisor_policy_sdk::testing::{exit, Harness};
    use wasmvisor_policy_sdk::ExitKind;

    /// Where every exit happens: in minios's kernel text.
    const RIP: u64 = 0xffff_ffff_8010_1234;

    fn guard(pairs: &[(&str, &str)]) -> Result<(MemGuard, Subscriptions), String> {
        MemGuard::init(&pairs.iter().copied().collect())
    }

    /// The guard on minios, granted protect-memory.
    fn on_minios(pairs: &[(&str, &str)]) -> Harness<MemGuard> {
        let host = minios::host();
        host.set_reg(Reg::Rip, RIP)
            .grant(Capabilities::PROTECT_MEMORY);
        Harness::with_host(host, pairs).unwrap()
    }

    fn lstar(value: u64) -> ExitKind {
        exit::wrmsr(MSR_LSTAR, value)
    }

    /// The guard after minios programmed its system-call entry.
    fn discovered(pairs: &[(&str, &str)]) -> Harness<MemGuard> {
        let mut h = on_minios(pairs);
        assert!(h.exit(lstar(KBASE + 0x101000)).is_decline());
        h
    }

    fn protected(h: &Harness<MemGuard>) -> Vec<(u64, u64, Protection)> {
        let calls = h.host().protect_calls();
        calls
            .iter()
            .map(|p| (p.range.base, p.range.len, p.mode))
            .collect()
    }

    fn answer(action: Action) -> Verdict {
        Verdict::handled(vec![action])
    }

    /// The guard on one no-access page at 0x9000 that reads as `value`.
    fn read_protected(value: &str) -> Harness<MemGuard> {
        on_minios(&[
            ("discover", "false"),
            ("no-access", "0x9000+0x1000"),
            ("read-value", value),
        ])
    }

    #[test]
    fn config_and_subscriptions() {
        let (g, s) = guard(&[]).unwrap();
        assert_eq!(g.on_tamper, OnTamper::Deny);
        assert!(g.discover && g.regions.is_empty() && g.read_value.is_none());
        assert_eq!((g.max_tables, g.text_pages), (64, 1));
        assert_eq!((s.msrs[0].first, s.msrs[0].last), (MSR_LSTAR, MSR_LSTAR));
        assert_eq!(s.events, EventSet::MEM_VIOLATION);
        assert_eq!(s.capabilities, Capabilities::PROTECT_MEMORY);
        assert!(s.protect.is_empty());

        let (g, s) = guard(&[
            ("discover", "false"),
            ("no-access", "0x9000+0x1000"),
            ("protect", "0x20000+0x2000"),
            ("read-value", "0x5a"),
            ("on-tamper", "allow"),
        ])
        .unwrap();
        assert!(s.msrs.is_empty());
        assert_eq!((g.read_value, g.on_tamper), (Some(0x5a), OnTamper::Allow));
        let p: Vec<_> = s
            .protect
            .iter()
            .map(|p| (p.range.base, p.range.len, p.mode))
            .collect();
        assert_eq!(
            p,
            [
                (0x20000, 0x2000, Protection::WriteProtect),
                (0x9000, 0x1000, Protection::NoAccess)
            ]
        );
        let (g, _) = guard(&[("on-tamper", "unprotect")]).unwrap();
        assert_eq!(g.on_tamper, OnTamper::Unprotect);
    }

    #[test]
    fn config_errors() {
        let err = |pairs: &[(&str, &str)]| guard(pairs).err().unwrap();
        assert_eq!(err(&[("deny", "1")]), "unknown config key `deny`");
        assert!(err(&[("on-tamper", "panic")]).contains("deny, allow or unprotect"));
        assert!(err(&[("protect", "0x9001+0x1000")]).contains("page-aligned"));
        assert!(err(&[("protect", "0x9000+0x800")]).contains("page-aligned"));
        assert!(err(&[("protect", "0x9000")]).contains("BASE+LEN"));
        assert!(
            err(&[("protect", "0x9000+0x2000"), ("no-access", "0xa000+0x1000")])
                .contains("overlaps")
        );
        assert!(err(&[("read-value", "1")]).contains("no-access"));
        assert!(err(&[("discover", "false")]).contains("nothing to guard"));
        assert!(err(&[("discover", "maybe")]).contains("discover"));
        assert!(err(&[("max-tables", "0")]).contains("max-tables"));
        assert!(err(&[("text-pages", "1000")]).contains("text-pages"));
    }

    #[test]
    fn lstar_write_protects_text_and_tables() {
        let h = discovered(&[]);
        assert_eq!(
            protected(&h),
            [
                (0x101000, 0x1000, Protection::WriteProtect),
                (0x104000, 0x7000, Protection::WriteProtect)
            ]
        );
        assert_eq!(h.policy().entry, Some(KBASE + 0x101000));
        assert_eq!(
            h.host().events_of("protected"),
            [
                r#"{"trigger":"lstar","entry":"0xffffffff80101000","cr3":"0x104000","paging":"4-level","tables":7,"truncated":false,"ranges":[{"base":"0x101000","len":4096,"kind":"text","mode":"write-protect"},{"base":"0x104000","len":28672,"kind":"page-table","mode":"write-protect"}],"errors":[]}"#
            ]
        );
        let logs = h.host().logs();
        assert_eq!(logs[0].level, LogLevel::Info);
        assert!(logs[0]
            .msg
            .contains("write-protected text 0x101000+0x1000, page-table 0x104000+0x7000"));
    }

    #[test]
    fn discovery_runs_once_and_reports_a_rewrite() {
        let mut h = discovered(&[]);
        assert!(h.exit(lstar(KBASE + 0x101000)).is_decline());
        assert_eq!(h.host().protect_calls().len(), 2);
        assert!(h.host().events_of("lstar-changed").is_empty());
        assert!(h.exit(lstar(0xdead_0000)).is_decline());
        assert_eq!(h.host().protect_calls().len(), 2);
        assert_eq!(
            h.host().events_of("lstar-changed"),
            [format!(
                r#"{{"old":"{:#x}","new":"{:#x}","rip":"{RIP:#x}"}}"#,
                KBASE + 0x101000,
                0xdead_0000_u64
            )]
        );
        // Reads of LSTAR and other MSRs are not the guard's business.
        assert!(h.exit(exit::rdmsr(MSR_LSTAR)).is_decline());
        assert!(h.exit(exit::wrmsr(0x10, 0)).is_decline());
        assert_eq!(h.host().events().len(), 2);
    }

    #[test]
    fn discovery_with_options_and_failures() {
        // Two text pages (text and rodata), a cap of 3 tables.
        let h = discovered(&[("text-pages", "2"), ("max-tables", "3")]);
        assert_eq!(
            protected(&h),
            [
                (0x101000, 0x2000, Protection::WriteProtect),
                (0x104000, 0x2000, Protection::WriteProtect),
                (0x108000, 0x1000, Protection::WriteProtect)
            ]
        );
        assert!(h.host().events_of("protected")[0].contains(r#""truncated":true"#));

        // An entry that does not translate still protects the tables.
        let mut h = on_minios(&[]);
        assert!(h.exit(lstar(0x1234)).is_decline());
        assert_eq!(
            protected(&h),
            [(0x104000, 0x7000, Protection::WriteProtect)]
        );
        assert!(h.host().events_of("protected")[0].contains("translate 0x1000: not-mapped"));
        assert!(h
            .host()
            .logs()
            .iter()
            .any(|l| l.level == LogLevel::Warn && l.msg.contains("not-mapped")));

        // A refused protect is reported, and nothing is guarded.
        let mut h = on_minios(&[]);
        h.host().revoke(Capabilities::PROTECT_MEMORY);
        h.exit(lstar(KBASE + 0x101000));
        assert!(h.policy().regions.is_empty());
        assert!(h.host().events_of("protected")[0]
            .contains("protect text 0x101000+0x1000: not-granted"));

        // A page already guarded by the config is not protected twice.
        let h = discovered(&[("protect", "0x106000+0x1000")]);
        assert_eq!(
            protected(&h),
            [
                (0x101000, 0x1000, Protection::WriteProtect),
                (0x104000, 0x2000, Protection::WriteProtect),
                (0x107000, 0x4000, Protection::WriteProtect)
            ]
        );
    }

    #[test]
    fn tamper_is_denied_by_default() {
        let mut h = discovered(&[]);
        h.host().take_logs();
        let deny = answer(Action::Deny);
        assert_eq!(h.exit(exit::mem_write(0x101ff0, 1, 0x90)), deny);
        assert_eq!(h.exit(exit::mem_write(0x107ff8, 8, 0x200)), deny);
        assert_eq!(
            h.host().events_of("tamper"),
            [
                r#"{"gpa":"0x101ff0","rip":"0xffffffff80101234","size":1,"data":"0x90","access":"write","kind":"text","verdict":"deny"}"#,
                r#"{"gpa":"0x107ff8","rip":"0xffffffff80101234","size":8,"data":"0x200","access":"write","kind":"page-table","verdict":"deny"}"#
            ]
        );
        let logs = h.host().logs();
        assert_eq!(logs.len(), 2);
        assert!(logs.iter().all(|l| l.level == LogLevel::Warn));
        assert_eq!(
            logs[0].msg,
            "mem-guard: tamper: write of 1 bytes (0x90) at GPA 0x101ff0 (text) from rip 0xffffffff80101234: deny"
        );
        // Not a guarded page: someone else's business.
        assert!(h.exit(exit::mem_write(0x103000, 8, 1)).is_decline());
    }

    #[test]
    fn allow_and_unprotect() {
        let mut h = discovered(&[("on-tamper", "allow")]);
        for _ in 0..2 {
            let v = h.exit(exit::mem_write(0x101ff0, 1, 0x90));
            assert_eq!(v, answer(Action::Allow));
        }
        assert_eq!(h.host().events_of("tamper").len(), 2);

        let mut h = discovered(&[("on-tamper", "unprotect")]);
        let v = h.exit(exit::mem_write(0x107ff8, 8, 0x200));
        assert_eq!(v, answer(Action::UnprotectRetry));
        assert!(h.host().events_of("tamper")[0].contains(r#""verdict":"unprotect""#));
        // The page is no longer guarded; its neighbours still are.
        let g = h.policy();
        assert!(g.region_of(0x107000).is_none());
        assert_eq!(g.region_of(0x106fff).unwrap().kind, Kind::PageTable);
        assert_eq!(g.region_of(0x108000).unwrap().kind, Kind::PageTable);
        assert!(h.exit(exit::mem_write(0x107ff8, 8, 0)).is_decline());
    }

    #[test]
    fn forget_page_splits_regions() {
        let (mut g, _) = guard(&[("protect", "0x10000+0x3000")]).unwrap();
        g.forget_page(0x10000);
        assert_eq!((g.regions[0].base, g.regions[0].len), (0x11000, 0x2000));
        g.forget_page(0x12fff);
        assert_eq!((g.regions[0].base, g.regions[0].len), (0x11000, 0x1000));
        g.forget_page(0x11800);
        assert!(g.regions.is_empty());
    }

    #[test]
    fn no_access_reads_get_the_read_value() {
        let mut h = read_protected("0x5a");
        let v = h.exit(exit::mem_read(0x9000, 2));
        assert_eq!(v, answer(Action::CompleteRead(0x5a)));
        assert_eq!(
            h.host().events_of("access"),
            [
                r#"{"gpa":"0x9000","rip":"0xffffffff80101234","size":2,"data":"0x0","access":"read","kind":"range","verdict":"read-value"}"#
            ]
        );
        assert_eq!(h.host().logs()[0].level, LogLevel::Info);
        // The value is cut to the access size.
        let mut h = read_protected("0x1234");
        let v = h.exit(exit::mem_read(0x9002, 1));
        assert_eq!(v, answer(Action::CompleteRead(0x34)));
        // Writes to a no-access page are tampering, answered by on-tamper.
        let v = h.exit(exit::mem_write(0x9000, 2, 0x1234));
        assert_eq!(v, answer(Action::Deny));
        assert!(h.host().events_of("tamper")[0].contains(r#""kind":"range""#));
        // Without read-value a read follows on-tamper: deny reads all-ones.
        let mut h = on_minios(&[("discover", "false"), ("no-access", "0x9000+0x1000")]);
        assert_eq!(h.exit(exit::mem_read(0x9000, 4)), answer(Action::Deny));
        // Without discovery, LSTAR is not watched.
        assert!(h.exit(lstar(KBASE + 0x101000)).is_decline());
        assert!(h.host().protect_calls().is_empty());
    }
}

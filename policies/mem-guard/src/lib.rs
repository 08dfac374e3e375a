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

mod walk;

use walk::{coalesce, Paging, PAGE};
use wasmvisor_policy_sdk::json::{self, Object};
use wasmvisor_policy_sdk::{
    export_policy, host, mask, Action, Capabilities, Config, Direction, EventSet, Exit, GpaRange,
    HostError, LogLevel, MemAccess, MemViolation, MsrExit, Policy, ProtectRequest, Protection, Reg,
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
            .u64("base", self.base)
            .u64("len", self.len)
            .str("kind", self.kind.name())
            .str("mode", mode_name(self.mode))
            .finish()
    }
}

/// The host calls the guard makes, behind a trait so that the logic runs
/// in unit tests off the host.
trait Guest {
    fn reg(&mut self, reg: Reg) -> u64;
    fn translate(&mut self, gva: u64) -> Result<u64, HostError>;
    fn read_phys(&mut self, gpa: u64, len: u32) -> Result<Vec<u8>, HostError>;
    fn protect(&mut self, req: ProtectRequest) -> Result<(), HostError>;
    fn emit(&mut self, kind: &str, json: &str);
    fn log(&mut self, level: LogLevel, msg: &str);
}

/// The real host.
struct Live;

impl Guest for Live {
    fn reg(&mut self, reg: Reg) -> u64 {
        host::get_reg(reg)
    }
    fn translate(&mut self, gva: u64) -> Result<u64, HostError> {
        host::translate(gva)
    }
    fn read_phys(&mut self, gpa: u64, len: u32) -> Result<Vec<u8>, HostError> {
        host::read_phys(gpa, len)
    }
    fn protect(&mut self, req: ProtectRequest) -> Result<(), HostError> {
        host::protect(req)
    }
    fn emit(&mut self, kind: &str, json: &str) {
        host::emit(kind, json);
    }
    fn log(&mut self, level: LogLevel, msg: &str) {
        host::log(level, msg);
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
    fn protect_pages(
        &mut self,
        g: &mut dyn Guest,
        pages: &[u64],
        kind: Kind,
        errors: &mut Vec<String>,
    ) {
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
            match g.protect(req) {
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
    fn discover(&mut self, g: &mut dyn Guest, entry: u64) {
        self.entry = Some(entry);
        let cr3 = g.reg(Reg::Cr3);
        let paging = Paging::detect(g.reg(Reg::Cr0), g.reg(Reg::Cr4), g.reg(Reg::Efer));
        let mut errors = Vec::new();

        let mut text = Vec::new();
        for i in 0..self.text_pages {
            let gva = (entry & !(PAGE - 1)).wrapping_add(i * PAGE);
            match g.translate(gva) {
                Ok(gpa) => text.push(gpa & !(PAGE - 1)),
                Err(e) => errors.push(format!("translate {gva:#x}: {}", e.name())),
            }
        }
        let tables = walk::table_pages(paging, cr3, self.max_tables, &mut |gpa, len| {
            g.read_phys(gpa, len)
        });
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
        self.protect_pages(g, &text, Kind::Text, &mut errors);
        self.protect_pages(g, &table_pages, Kind::PageTable, &mut errors);

        let mut regions = self.regions.clone();
        regions.sort_by_key(|r| r.base);
        let json = Object::new()
            .str("trigger", "lstar")
            .u64("entry", entry)
            .u64("cr3", cr3)
            .str("paging", paging.name())
            .u64("tables", tables.pages.len() as u64)
            .bool("truncated", tables.truncated)
            .raw("ranges", &json::array(regions.iter().map(Region::json)))
            .raw(
                "errors",
                &json::array(errors.iter().map(|e| json::string(e))),
            )
            .finish();
        g.emit("protected", &json);

        let added: Vec<String> = self.regions[before..]
            .iter()
            .map(|r| format!("{} {:#x}+{:#x}", r.kind.name(), r.base, r.len))
            .collect();
        g.log(
            LogLevel::Info,
            &format!(
                "mem-guard: syscall entry {entry:#x}, cr3 {cr3:#x} ({} paging, {} table pages{}): write-protected {}",
                paging.name(),
                tables.pages.len(),
                if tables.truncated { ", truncated" } else { "" },
                if added.is_empty() { "nothing".to_string() } else { added.join(", ") }
            ),
        );
        for e in &errors {
            g.log(LogLevel::Warn, &format!("mem-guard: {e}"));
        }
    }

    fn msr(&mut self, g: &mut dyn Guest, ev: &Exit, msr: &MsrExit) -> Verdict {
        if msr.index != MSR_LSTAR || msr.direction != Direction::Write || !self.discover {
            return Verdict::Decline;
        }
        match self.entry {
            None => self.discover(g, msr.value),
            Some(old) if old != msr.value => {
                let json = Object::new()
                    .u64("old", old)
                    .u64("new", msr.value)
                    .u64("rip", ev.rip)
                    .finish();
                g.emit("lstar-changed", &json);
                g.log(
                    LogLevel::Warn,
                    &format!(
                        "mem-guard: IA32_LSTAR rewritten from {old:#x} to {:#x} at rip {:#x}",
                        msr.value, ev.rip
                    ),
                );
            }
            Some(_) => {}
        }
        // Let KVM store the value: the guest's own kernel set it.
        Verdict::Decline
    }

    fn violation(&mut self, g: &mut dyn Guest, ev: &Exit, v: &MemViolation) -> Verdict {
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
            .u64("gpa", v.gpa)
            .u64("rip", ev.rip)
            .u64("size", u64::from(v.size))
            .u64("data", v.data)
            .str("access", access_name(v.access))
            .str("kind", region.kind.name())
            .str("verdict", verdict)
            .finish();
        g.emit(event, &json);
        let what = match v.access {
            MemAccess::Write => format!("write of {} bytes ({:#x})", v.size, v.data),
            other => format!("{} of {} bytes", access_name(other), v.size),
        };
        g.log(
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
        self.msr(&mut Live, ev, &msr)
    }

    fn on_mem_violation(&mut self, ev: &Exit, violation: MemViolation) -> Verdict {
        self.violation(&mut Live, ev, &violation)
    }
}

export_policy!(MemGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wasmvisor_policy_sdk::{dispatch, ExitEvent, ExitKind, MsrReason};

    const KBASE: u64 = 0xffff_ffff_8000_0000;

    /// A fake host holding minios's page tables and recording what the
    /// policy did.
    #[derive(Default)]
    struct Fake {
        mem: BTreeMap<u64, u64>,
        protected: Vec<(u64, u64, Protection)>,
        refuse_protect: bool,
        events: Vec<(String, String)>,
        logs: Vec<(LogLevel, String)>,
    }

    impl Fake {
        fn minios() -> Fake {
            let mut f = Fake::default();
            let tables = [
                (0x104000, 0x108023),
                (0x104000 + 511 * 8, 0x105023),
                (0x105000 + 510 * 8, 0x106023),
                (0x106000, 0x107023),
                (0x108000, 0x109023),
                (0x109000, 0x10a023),
                (0x10a000 + 0x100 * 8, 0x100063),
            ];
            f.mem.extend(tables);
            for i in 0x100..=0x10c_u64 {
                f.mem.insert(0x107000 + i * 8, (i << 12) | 0x63);
            }
            f
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
            match reg {
                Reg::Cr3 => 0x104000,
                Reg::Cr0 => 0x8000_0011,
                Reg::Cr4 => 0x20,
                Reg::Efer => 0xd01,
                _ => 0,
            }
        }
        fn translate(&mut self, gva: u64) -> Result<u64, HostError> {
            if (KBASE + 0x100000..KBASE + 0x10d000).contains(&gva) {
                Ok(gva - KBASE)
            } else {
                Err(HostError::NotMapped)
            }
        }
        fn read_phys(&mut self, gpa: u64, len: u32) -> Result<Vec<u8>, HostError> {
            if gpa + u64::from(len) > 0x20_0000 {
                return Err(HostError::OutOfRange);
            }
            let mut out = Vec::new();
            for q in (gpa..gpa + u64::from(len)).step_by(8) {
                out.extend(self.mem.get(&q).copied().unwrap_or(0).to_le_bytes());
            }
            Ok(out)
        }
        fn protect(&mut self, req: ProtectRequest) -> Result<(), HostError> {
            if self.refuse_protect {
                return Err(HostError::NotGranted);
            }
            self.protected
                .push((req.range.base, req.range.len, req.mode));
            Ok(())
        }
        fn emit(&mut self, kind: &str, json: &str) {
            self.events.push((kind.into(), json.into()));
        }
        fn log(&mut self, level: LogLevel, msg: &str) {
            self.logs.push((level, msg.into()));
        }
    }

    fn guard(pairs: &[(&str, &str)]) -> Result<(MemGuard, Subscriptions), String> {
        MemGuard::init(&pairs.iter().copied().collect())
    }

    const EV: Exit = Exit {
        vcpu: 0,
        seq: 7,
        rip: 0xffff_ffff_8010_1234,
    };

    fn lstar(value: u64) -> MsrExit {
        MsrExit {
            index: MSR_LSTAR,
            direction: Direction::Write,
            value,
            reason: MsrReason::Filtered,
        }
    }

    fn write(gpa: u64, size: u8, data: u64) -> MemViolation {
        MemViolation {
            gpa,
            access: MemAccess::Write,
            size,
            data,
        }
    }

    fn read(gpa: u64, size: u8) -> MemViolation {
        MemViolation {
            gpa,
            access: MemAccess::Read,
            size,
            data: 0,
        }
    }

    fn discovered(pairs: &[(&str, &str)]) -> (MemGuard, Fake) {
        let (mut g, _) = guard(pairs).unwrap();
        let mut f = Fake::minios();
        assert!(g.msr(&mut f, &EV, &lstar(KBASE + 0x101000)).is_decline());
        (g, f)
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
        let (g, f) = discovered(&[]);
        assert_eq!(
            f.protected,
            [
                (0x101000, 0x1000, Protection::WriteProtect),
                (0x104000, 0x7000, Protection::WriteProtect)
            ]
        );
        assert_eq!(g.entry, Some(KBASE + 0x101000));
        let protected = f.events("protected");
        assert_eq!(protected.len(), 1);
        assert_eq!(
            protected[0],
            r#"{"trigger":"lstar","entry":18446744071563120640,"cr3":1064960,"paging":"4-level","tables":7,"truncated":false,"ranges":[{"base":1052672,"len":4096,"kind":"text","mode":"write-protect"},{"base":1064960,"len":28672,"kind":"page-table","mode":"write-protect"}],"errors":[]}"#
        );
        assert!(f.logs[0]
            .1
            .contains("write-protected text 0x101000+0x1000, page-table 0x104000+0x7000"));
    }

    #[test]
    fn discovery_runs_once_and_reports_a_rewrite() {
        let (mut g, mut f) = discovered(&[]);
        assert!(g.msr(&mut f, &EV, &lstar(KBASE + 0x101000)).is_decline());
        assert_eq!(f.protected.len(), 2);
        assert!(f.events("lstar-changed").is_empty());
        assert!(g.msr(&mut f, &EV, &lstar(0xdead_0000)).is_decline());
        assert_eq!(f.protected.len(), 2);
        assert_eq!(f.events("lstar-changed").len(), 1);
        // Reads of LSTAR and other MSRs are not the guard's business.
        let rd = MsrExit {
            direction: Direction::Read,
            ..lstar(0)
        };
        assert!(g.msr(&mut f, &EV, &rd).is_decline());
    }

    #[test]
    fn discovery_with_options_and_failures() {
        // Two text pages (text and rodata), a cap of 3 tables.
        let (_, f) = discovered(&[("text-pages", "2"), ("max-tables", "3")]);
        assert_eq!(
            f.protected,
            [
                (0x101000, 0x2000, Protection::WriteProtect),
                (0x104000, 0x2000, Protection::WriteProtect),
                (0x108000, 0x1000, Protection::WriteProtect)
            ]
        );
        assert!(f.events("protected")[0].contains(r#""truncated":true"#));

        // An entry that does not translate still protects the tables.
        let (mut g, _) = guard(&[]).unwrap();
        let mut f = Fake::minios();
        assert!(g.msr(&mut f, &EV, &lstar(0x1234)).is_decline());
        assert_eq!(f.protected, [(0x104000, 0x7000, Protection::WriteProtect)]);
        assert!(f.events("protected")[0].contains("translate 0x1000: not-mapped"));
        assert!(f
            .logs
            .iter()
            .any(|(l, m)| *l == LogLevel::Warn && m.contains("not-mapped")));

        // A refused protect is reported, and nothing is guarded.
        let (mut g, _) = guard(&[]).unwrap();
        let mut f = Fake::minios();
        f.refuse_protect = true;
        g.msr(&mut f, &EV, &lstar(KBASE + 0x101000));
        assert!(g.regions.is_empty());
        assert!(f.events("protected")[0].contains("protect text 0x101000+0x1000: not-granted"));

        // A page already guarded by the config is not protected twice.
        let (mut g, _) = guard(&[("protect", "0x106000+0x1000")]).unwrap();
        let mut f = Fake::minios();
        g.msr(&mut f, &EV, &lstar(KBASE + 0x101000));
        assert_eq!(
            f.protected,
            [
                (0x101000, 0x1000, Protection::WriteProtect),
                (0x104000, 0x2000, Protection::WriteProtect),
                (0x107000, 0x4000, Protection::WriteProtect)
            ]
        );
    }

    fn handled(v: Verdict) -> Vec<Action> {
        match v {
            Verdict::Handled(a) => a,
            Verdict::Decline => panic!("declined"),
        }
    }

    #[test]
    fn tamper_is_denied_by_default() {
        let (mut g, mut f) = discovered(&[]);
        let v = g.violation(&mut f, &EV, &write(0x101ff0, 1, 0x90));
        assert_eq!(handled(v), [Action::Deny]);
        let v = g.violation(&mut f, &EV, &write(0x107ff8, 8, 0x200));
        assert_eq!(handled(v), [Action::Deny]);
        let t = f.events("tamper");
        assert_eq!(
            t,
            [
                r#"{"gpa":1056752,"rip":18446744071563121204,"size":1,"data":144,"access":"write","kind":"text","verdict":"deny"}"#,
                r#"{"gpa":1081336,"rip":18446744071563121204,"size":8,"data":512,"access":"write","kind":"page-table","verdict":"deny"}"#
            ]
        );
        let warns: Vec<_> = f
            .logs
            .iter()
            .filter(|(l, _)| *l == LogLevel::Warn)
            .collect();
        assert_eq!(warns.len(), 2);
        assert_eq!(
            warns[0].1,
            "mem-guard: tamper: write of 1 bytes (0x90) at GPA 0x101ff0 (text) from rip 0xffffffff80101234: deny"
        );
        // Not a guarded page: someone else's business.
        assert!(g
            .violation(&mut f, &EV, &write(0x103000, 8, 1))
            .is_decline());
    }

    #[test]
    fn allow_and_unprotect() {
        let (mut g, mut f) = discovered(&[("on-tamper", "allow")]);
        for _ in 0..2 {
            let v = g.violation(&mut f, &EV, &write(0x101ff0, 1, 0x90));
            assert_eq!(handled(v), [Action::Allow]);
        }
        assert_eq!(f.events("tamper").len(), 2);

        let (mut g, mut f) = discovered(&[("on-tamper", "unprotect")]);
        let v = g.violation(&mut f, &EV, &write(0x107ff8, 8, 0x200));
        assert_eq!(handled(v), [Action::UnprotectRetry]);
        assert!(f.events("tamper")[0].contains(r#""verdict":"unprotect""#));
        // The page is no longer guarded; its neighbours still are.
        assert!(g.region_of(0x107000).is_none());
        assert_eq!(g.region_of(0x106fff).unwrap().kind, Kind::PageTable);
        assert_eq!(g.region_of(0x108000).unwrap().kind, Kind::PageTable);
        assert!(g
            .violation(&mut f, &EV, &write(0x107ff8, 8, 0))
            .is_decline());
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
        let (mut g, _) = guard(&[
            ("discover", "false"),
            ("no-access", "0x9000+0x1000"),
            ("read-value", "0x5a"),
        ])
        .unwrap();
        let mut f = Fake::default();
        let v = g.violation(&mut f, &EV, &read(0x9000, 2));
        assert_eq!(handled(v), [Action::CompleteRead(0x5a)]);
        let access = f.events("access");
        assert_eq!(
            access[0],
            r#"{"gpa":36864,"rip":18446744071563121204,"size":2,"data":0,"access":"read","kind":"range","verdict":"read-value"}"#
        );
        // The value is cut to the access size.
        let (mut g, _) = guard(&[
            ("discover", "false"),
            ("no-access", "0x9000+0x1000"),
            ("read-value", "0x1234"),
        ])
        .unwrap();
        let v = g.violation(&mut f, &EV, &read(0x9002, 1));
        assert_eq!(handled(v), [Action::CompleteRead(0x34)]);
        // Writes to a no-access page are tampering, answered by on-tamper.
        let v = g.violation(&mut f, &EV, &write(0x9000, 2, 0x1234));
        assert_eq!(handled(v), [Action::Deny]);
        assert!(f.events("tamper")[0].contains(r#""kind":"range""#));
        // Without read-value a read follows on-tamper: deny reads all-ones.
        let (mut g, _) = guard(&[("discover", "false"), ("no-access", "0x9000+0x1000")]).unwrap();
        let v = g.violation(&mut f, &EV, &read(0x9000, 4));
        assert_eq!(handled(v), [Action::Deny]);
    }

    #[test]
    fn dispatch_routes_kinds() {
        // dispatch calls the Live host only for exits the guard acts on;
        // an unguarded violation and a foreign MSR are declined off-host.
        let (mut g, _) = guard(&[("discover", "false"), ("protect", "0x9000+0x1000")]).unwrap();
        let ev = ExitEvent {
            vcpu: 0,
            seq: 0,
            rip: 0,
            kind: ExitKind::MemViolation(write(0x5000, 1, 0)),
        };
        assert!(dispatch(&mut g, ev).is_decline());
        let ev = ExitEvent {
            vcpu: 0,
            seq: 1,
            rip: 0,
            kind: ExitKind::Msr(MsrExit {
                index: 0x10,
                ..lstar(0)
            }),
        };
        assert!(dispatch(&mut g, ev).is_decline());
    }
}

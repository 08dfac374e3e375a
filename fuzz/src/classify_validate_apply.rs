//! Routes from arbitrary subscriptions, classify against a reference
//! model, then validate and apply arbitrary answers against real guest
//! RAM with a fake vCPU.
//!
//! Invariants:
//! - nothing panics;
//! - `classify` returns exactly the policies that subscribed (load order),
//!   then the built-ins that claim the address, or `Default` when none do;
//! - the MSR filter covers exactly the subscribed MSRs, in at most 16
//!   sorted, disjoint ranges of at most 0x3000 MSRs (for subscriptions
//!   without inverted MSR ranges, which load time refuses);
//! - when `validate` rejects an answer, guest RAM is byte-for-byte
//!   unchanged (and nothing is applied);
//! - when it accepts one, `apply` succeeds (unless the exit itself names
//!   memory outside RAM, which KVM never reports), RAM and page
//!   protections afterwards equal a model that performs the actions in
//!   order, the protection map's runs tile RAM and are maximal, registers
//!   and exceptions reach the vCPU, and a read exit is always left with a
//!   value or a #GP.

use std::sync::{Mutex, OnceLock};
use wasmvisor_exit::GuestRam;

use crate as f;
use arbitrary::{Result, Unstructured};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use wasmvisor_exit::{
    apply, classify, default_actions, validate, Action, ApplyError, Completion, Exception,
    ExitEvent, ExitKind, Flow, GpaRange, GuestEnv, MemAccess, Protection, ProtectionMap, Route,
    Routes, RoutesError, Subscriptions, Target, MAX_MSR_FILTER_RANGES, PAGE_SIZE,
};

/// Two adjacent regions and one behind a hole: writes may straddle the
/// seam or fall into the hole.
const RAM: &[(u64, usize)] = &[(0, 0x1000), (0x1000, 0x1000), (0x4000, 0x1000)];
/// The protection map covers `[0, RAM_END)`, hole included.
const RAM_END: u64 = 0x5000;
const PORT_HINTS: &[u64] = &[0, 0x20, 0x3f8, 0x3ff, 0x510, 0xcf8, 0xffff];
const MSR_HINTS: &[u64] = &[
    0,
    0x10,
    0x174,
    0x1fff,
    0x2000,
    0x4000_0000,
    0xc000_0080,
    0xffff_ffff,
];

fn mem() -> &'static GuestRam {
    static MEM: OnceLock<GuestRam> = OnceLock::new();
    MEM.get_or_init(|| f::ram(RAM))
}

fn mmio_hit(r: &GpaRange, gpa: u64) -> bool {
    // A wrapping range is clamped at the top of the address space.
    r.len > 0 && gpa >= r.base && gpa - r.base < r.len
}

/// The chain `classify` must return, computed the slow, obvious way.
fn expected_chain(
    event: &ExitEvent,
    policies: &[Subscriptions],
    builtins: &[(Vec<std::ops::RangeInclusive<u16>>, Vec<GpaRange>)],
) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, s) in policies.iter().enumerate() {
        let hit = match event.kind {
            ExitKind::Io(io) => s.ports.iter().any(|r| r.contains(&io.port)),
            ExitKind::Mmio(m) => s.mmio.iter().any(|r| mmio_hit(r, m.gpa)),
            ExitKind::Msr(m) => s.msrs.iter().any(|r| r.contains(&m.index)),
            ExitKind::MemViolation(_) => s.events.mem_violation,
            ExitKind::Debug(_) => s.events.debug,
            ExitKind::Hlt => s.events.hlt,
            ExitKind::Shutdown { .. } => s.events.shutdown,
        };
        if hit {
            out.push(Target::Policy(i as u16));
        }
    }
    for (i, (ports, mmio)) in builtins.iter().enumerate() {
        let hit = match event.kind {
            ExitKind::Io(io) => ports.iter().any(|r| r.contains(&io.port)),
            ExitKind::Mmio(m) => mmio.iter().any(|r| mmio_hit(r, m.gpa)),
            _ => false,
        };
        if hit {
            out.push(Target::Builtin(i as u16));
        }
    }
    out
}

fn check_msr_filter(routes: &Routes, policies: &[Subscriptions], probes: &[u32]) {
    let filter = routes.msr_filter();
    assert!(filter.len() <= MAX_MSR_FILTER_RANGES);
    for w in filter.windows(2) {
        assert!(
            w[0].end() < w[1].start(),
            "filter ranges overlap or are unsorted: {filter:?}"
        );
    }
    for r in filter {
        assert!(r.start() <= r.end());
        assert!(r.end() - r.start() < 0x3000, "filter range too long: {r:?}");
    }
    for &msr in probes {
        let subscribed = policies
            .iter()
            .any(|s| s.msrs.iter().any(|r| r.contains(&msr)));
        let filtered = filter.iter().any(|r| r.contains(&msr));
        assert_eq!(subscribed, filtered, "msr {msr:#x}: filter {filter:?}");
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let gpa_hints = f::GPA_HINTS;
    // Building routes costs milliseconds under the sanitizer (a 64 Ki-entry
    // port table); do it for one input in four so that validate and apply
    // get most of the executions.
    let with_routes = u.arbitrary::<u8>()? % 4 == 0;
    let policies = f::list(u, 4, |u| {
        f::subscriptions(u, gpa_hints, PORT_HINTS, MSR_HINTS)
    })?;
    let builtins = f::list(u, 2, |u| {
        Ok((
            f::list(u, 2, |u| f::inclusive::<u16>(u, PORT_HINTS, 0xffff))?,
            f::list(u, 2, |u| f::gpa_range(u, gpa_hints))?,
        ))
    })?;
    let refs: Vec<&Subscriptions> = policies.iter().collect();
    let routes = match with_routes.then(|| Routes::build(&refs, &builtins)) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(RoutesError::TooManyMsrRanges { needed })) => {
            assert!(needed > MAX_MSR_FILTER_RANGES);
            None
        }
        Some(Err(RoutesError::TooManyChains(_))) => {
            panic!("a handful of policies cannot need 64 Ki chains")
        }
    };

    let events = f::list(u, 6, |u| f::exit_event(u, gpa_hints, PORT_HINTS, MSR_HINTS))?;
    if let Some(routes) = &routes {
        for event in &events {
            let expected = expected_chain(event, &policies, &builtins);
            match classify(event, routes) {
                Route::Chain(chain) => {
                    assert!(!chain.is_empty());
                    assert_eq!(chain, &expected[..], "{event:?}");
                }
                Route::Default => assert!(expected.is_empty(), "{event:?}: want {expected:?}"),
            }
        }
        let probes: Vec<u32> = events
            .iter()
            .filter_map(|e| match e.kind {
                ExitKind::Msr(m) => Some(m.index),
                _ => None,
            })
            .collect();
        // Load time refuses inverted ranges (`Subscriptions::unsupported`)
        // before routes are built; the filter is only checked for what
        // can reach it.
        let well_formed = policies
            .iter()
            .all(|s| s.msrs.iter().all(|r| r.start() <= r.end()));
        if well_formed {
            check_msr_filter(routes, &policies, &probes);
        }
    }

    // One answer to the first event (or an arbitrary one).
    let event = match events.first() {
        Some(e) => *e,
        None => f::exit_event(u, gpa_hints, PORT_HINTS, MSR_HINTS)?,
    };
    let actions = f::list(u, 5, |u| f::action(u, gpa_hints))?;
    let grants = f::capabilities(u)?;
    let mem = mem();
    f::fill(mem, u.arbitrary()?);
    let before = f::snapshot(mem);
    // Some pages protected already.
    let mut map = ProtectionMap::new(RAM_END);
    for _ in 0..u.int_in_range(0..=3u8)? {
        let first = u.int_in_range(0..=RAM_END / PAGE_SIZE - 1)?;
        let pages = u.int_in_range(1..=RAM_END / PAGE_SIZE - first)?;
        let mode = *u.choose(&[Protection::WriteProtect, Protection::NoAccess])?;
        map.protect(page_range(first, pages), mode)
            .expect("in-range protection");
    }
    let protections_before = pages(&map);
    let protector = Mutex::new(map);
    let env = GuestEnv {
        mem,
        protector: &protector,
    };
    let mut vcpu = f::FakeVcpu {
        debug: f::debug_state(u)?,
        ..Default::default()
    };
    let debug_before = vcpu.debug;

    let verdict = validate(&event, &actions, grants, mem);
    let Ok(()) = verdict else {
        assert_eq!(
            f::snapshot(mem),
            before,
            "validate rejected but RAM changed"
        );
        return Ok(());
    };

    // Accepted: apply it and compare with a model.
    let access = match event.kind {
        ExitKind::MemViolation(v) => Some(v),
        _ => None,
    };
    // The exit's own access, performed by allow / unprotect-retry. A
    // zero-sized access still names its first byte: unprotect-retry
    // unprotects that byte's page, which fails past the end of RAM.
    let access_in_ram = access.is_some_and(|v| {
        let n = usize::from(v.size).clamp(1, 8);
        mem.check_range(GuestAddress(v.gpa), n)
    });
    let mut model = before;
    let mut protections = protections_before;
    for a in &actions {
        match a {
            Action::WritePhys { gpa, data } => {
                assert!(grants.write_memory);
                assert!(
                    f::write_snapshot(&mut model, *gpa, data),
                    "validate accepted a write outside RAM: {gpa:#x} + {}",
                    data.len()
                );
            }
            Action::Protect(req) => {
                assert!(grants.protect_memory && req.mode != Protection::NoExecute);
                set_pages(&mut protections, req.range, Some(req.mode));
            }
            Action::Unprotect(range) => {
                assert!(grants.protect_memory);
                set_pages(&mut protections, *range, None);
            }
            Action::UnprotectRetry | Action::Allow => {
                let v = access.expect("validate keeps these to memory violations");
                if *a == Action::UnprotectRetry {
                    let page = GpaRange {
                        base: v.gpa & !(PAGE_SIZE - 1),
                        len: PAGE_SIZE,
                    };
                    if page.end().is_some_and(|e| e <= RAM_END) {
                        set_pages(&mut protections, page, None);
                    }
                }
                if v.access == MemAccess::Write && access_in_ram {
                    let n = usize::from(v.size).min(8);
                    f::write_snapshot(&mut model, v.gpa, &v.data.to_le_bytes()[..n]);
                }
            }
            _ => {}
        }
    }
    let mut completion = Completion::default();
    let result = apply(&event, &actions, &mut vcpu, &env, &mut completion);
    let flow = match result {
        Ok(flow) => flow,
        // KVM only reports violations on RAM pages; one elsewhere may fail.
        Err(ApplyError::Memory { .. } | ApplyError::Protect(_))
            if access.is_some() && !access_in_ram =>
        {
            return Ok(());
        }
        Err(e) => panic!("validated answer failed to apply: {e}"),
    };
    assert_eq!(f::snapshot(mem), model, "RAM differs from the model");
    let map = protector.lock().unwrap();
    assert_eq!(
        pages(&map),
        protections,
        "protections differ from the model"
    );
    check_runs(&map);
    drop(map);

    let stops = actions
        .iter()
        .filter(|a| matches!(a, Action::Stop(_)))
        .count();
    assert!(stops <= 1);
    assert_eq!(matches!(flow, Flow::Stop(_)), stops == 1);
    let sets = actions
        .iter()
        .filter(|a| matches!(a, Action::SetReg { .. }))
        .count();
    // Resuming from an execute breakpoint sets RF in RFLAGS once more.
    assert!(vcpu.set_calls >= sets && vcpu.set_calls <= sets + 1);
    let injects: Vec<Exception> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Inject(e) => Some(*e),
            _ => None,
        })
        .filter(|e| !(matches!(event.kind, ExitKind::Msr(_)) && *e == Exception::GP))
        .collect();
    assert_eq!(vcpu.injected, injects);
    if !matches!(event.kind, ExitKind::Debug(_)) {
        assert_eq!(
            vcpu.debug, debug_before,
            "debug state changed outside a debug exit"
        );
    }
    if actions.contains(&Action::Step) {
        assert!(vcpu.debug.step_once);
    }
    if let Some(size) = event.kind.read_size() {
        assert!(
            completion.read.is_some() || completion.msr_fault,
            "read exit left without a value"
        );
        if let (Some(v), true) = (completion.read, size < 8) {
            assert!(
                v >> (u32::from(size) * 8) == 0,
                "{v:#x} wider than {size} bytes"
            );
        }
    }

    // The default handler must cope with any event as well.
    let mut vcpu = f::FakeVcpu::default();
    let mut completion = Completion::default();
    let _ = default_actions(&event, &mut vcpu, &env, &mut completion);
    Ok(())
}

fn page_range(first: u64, pages: u64) -> GpaRange {
    GpaRange {
        base: first * PAGE_SIZE,
        len: pages * PAGE_SIZE,
    }
}

/// The protection of every page of `[0, RAM_END)`.
fn pages(map: &ProtectionMap) -> Vec<Option<Protection>> {
    (0..RAM_END / PAGE_SIZE)
        .map(|p| map.lookup(p * PAGE_SIZE))
        .collect()
}

fn set_pages(model: &mut [Option<Protection>], range: GpaRange, mode: Option<Protection>) {
    let first = range.base / PAGE_SIZE;
    for p in first..first + range.len / PAGE_SIZE {
        model[p as usize] = mode;
    }
}

/// Runs tile RAM in order, and neighbours differ (maximal runs).
fn check_runs(map: &ProtectionMap) {
    let runs = map.runs();
    let mut at = 0;
    for r in &runs {
        assert_eq!(r.base, at, "{runs:?}");
        assert!(r.len > 0 && r.len % PAGE_SIZE == 0, "{runs:?}");
        at = r.base + r.len;
    }
    assert_eq!(at, RAM_END, "{runs:?}");
    for w in runs.windows(2) {
        assert_ne!(w[0].mode, w[1].mode, "runs not merged: {runs:?}");
    }
}

/// One fuzz input: never panics unless an invariant above is broken.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}

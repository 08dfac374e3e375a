//! Routes from arbitrary subscriptions, classify against a reference
//! model, then validate and apply arbitrary answers against real guest
//! RAM with a fake vCPU.
//!
//! Invariants:
//! - nothing panics;
//! - `classify` returns exactly the policies that subscribed (load order),
//!   then the built-ins that claim the address, or `Default` when none do;
//! - the MSR filter covers exactly the subscribed MSRs, in at most 16
//!   sorted, disjoint ranges of at most 0x3000 MSRs;
//! - when `validate` rejects an answer, guest RAM is byte-for-byte
//!   unchanged (and nothing is applied);
//! - when it accepts one, `apply` succeeds, RAM afterwards equals a model
//!   that performs the writes in order, registers and exceptions reach
//!   the vCPU, and a read exit is always left with a value or a #GP.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use wasmvisor_exit::{
    apply, classify, default_actions, validate, Action, Completion, Exception, ExitEvent,
    ExitKind, Flow, GpaRange, Route, Routes, RoutesError, Subscriptions, Target,
    MAX_MSR_FILTER_RANGES,
};
use wasmvisor_fuzz as f;

/// Two adjacent regions and one behind a hole: writes may straddle the
/// seam or fall into the hole.
const RAM: &[(u64, usize)] = &[(0, 0x1000), (0x1000, 0x1000), (0x4000, 0x1000)];
const PORT_HINTS: &[u64] = &[0, 0x20, 0x3f8, 0x3ff, 0x510, 0xcf8, 0xffff];
const MSR_HINTS: &[u64] = &[0, 0x10, 0x174, 0x1fff, 0x2000, 0x4000_0000, 0xc000_0080, 0xffff_ffff];

fn mem() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
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
    let routes = match Routes::build(&refs, &builtins) {
        Ok(r) => Some(r),
        Err(RoutesError::TooManyMsrRanges { needed }) => {
            assert!(needed > MAX_MSR_FILTER_RANGES);
            None
        }
        Err(RoutesError::TooManyChains(_)) => panic!("a handful of policies cannot need 64 Ki chains"),
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
        check_msr_filter(routes, &policies, &probes);
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

    let verdict = validate(&event, &actions, grants, mem);
    let Ok(()) = verdict else {
        assert_eq!(f::snapshot(mem), before, "validate rejected but RAM changed");
        return Ok(());
    };

    // Accepted: apply it and compare with a model.
    let mut model = before;
    for a in &actions {
        if let Action::WritePhys { gpa, data } = a {
            assert!(grants.write_memory);
            assert!(
                f::write_snapshot(&mut model, *gpa, data),
                "validate accepted a write outside RAM: {gpa:#x} + {}",
                data.len()
            );
        }
    }
    let mut vcpu = f::FakeVcpu::default();
    let mut completion = Completion::default();
    let flow = apply(&event, &actions, &mut vcpu, mem, &mut completion)
        .unwrap_or_else(|e| panic!("validated answer failed to apply: {e}"));
    assert_eq!(f::snapshot(mem), model, "RAM differs from the model");

    let stops = actions.iter().filter(|a| matches!(a, Action::Stop(_))).count();
    assert!(stops <= 1);
    assert_eq!(matches!(flow, Flow::Stop(_)), stops == 1);
    let sets = actions
        .iter()
        .filter(|a| matches!(a, Action::SetReg { .. }))
        .count();
    assert_eq!(vcpu.set_calls, sets);
    let injects: Vec<Exception> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Inject(e) => Some(*e),
            _ => None,
        })
        .filter(|e| !(matches!(event.kind, ExitKind::Msr(_)) && *e == Exception::GP))
        .collect();
    assert_eq!(vcpu.injected, injects);
    if let Some(size) = event.kind.read_size() {
        assert!(
            completion.read.is_some() || completion.msr_fault,
            "read exit left without a value"
        );
        if let (Some(v), true) = (completion.read, size < 8) {
            assert!(v >> (u32::from(size) * 8) == 0, "{v:#x} wider than {size} bytes");
        }
    }

    // The default handler must cope with any event as well.
    let mut vcpu = f::FakeVcpu::default();
    let mut completion = Completion::default();
    let _ = default_actions(&event, &mut vcpu, &mut completion);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

//! Routing: which policies (or built-in devices) answer which exits.
//!
//! Precedence, documented in `docs/routing.md`: for any exit, the policies
//! that subscribed to it are asked in the order they were loaded (command
//! line order); the first that does not decline answers it. Built-in
//! devices come after every policy, and the host's default handler after
//! them. Routes are computed once at load time into lookup tables so that
//! [`classify`] costs a table index or a binary search, never an allocation.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use thiserror::Error;

use crate::{ExitEvent, ExitKind, GpaRange, Subscriptions};

/// KVM accepts at most this many MSR filter ranges.
pub const MAX_MSR_FILTER_RANGES: usize = 16;
/// KVM caps one filter range's bitmap at 0x600 bytes.
const MAX_MSRS_PER_FILTER_RANGE: u32 = 0x600 * 8;

/// Who answers an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The policy at this load index.
    Policy(u16),
    /// The built-in device at this index.
    Builtin(u16),
}

/// The outcome of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Ask these, in order; if all decline, use the default handler.
    Chain(&'a [Target]),
    /// Nobody subscribed: the default handler answers.
    Default,
}

/// Routes could not be built from these subscriptions.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RoutesError {
    /// The MSR subscriptions need more filter ranges than KVM allows.
    #[error("the policies subscribe to {needed} separate MSR ranges; KVM's MSR filter holds at most {MAX_MSR_FILTER_RANGES}")]
    TooManyMsrRanges { needed: usize },
    /// More chains than the tables can index.
    #[error("too many distinct routing chains ({0})")]
    TooManyChains(usize),
}

/// Disjoint intervals over a numeric space, each pointing at a chain.
#[derive(Debug, Clone, Default)]
struct IntervalTable<T> {
    /// Sorted, disjoint `(first, last, chain)` entries.
    entries: Vec<(T, T, u16)>,
}

impl<T: Copy + Ord> IntervalTable<T> {
    fn lookup(&self, key: T) -> Option<u16> {
        let idx = self.entries.partition_point(|e| e.1 < key);
        self.entries.get(idx).filter(|e| e.0 <= key).map(|e| e.2)
    }
}

/// Lookup tables from exit addresses to chains of targets.
#[derive(Debug, Clone)]
pub struct Routes {
    chains: Vec<Box<[Target]>>,
    /// Chain index per port; 0 is the empty chain.
    ports: Box<[u16]>,
    mmio: IntervalTable<u64>,
    msrs: IntervalTable<u32>,
    hlt: u16,
    shutdown: u16,
    debug: u16,
    mem_violation: u16,
    msr_filter: Vec<RangeInclusive<u32>>,
}

/// Accumulates chains, deduplicating identical ones.
struct ChainSet {
    chains: Vec<Box<[Target]>>,
    index: HashMap<Vec<Target>, u16>,
}

impl ChainSet {
    fn new() -> Self {
        let mut index = HashMap::new();
        index.insert(Vec::new(), 0);
        ChainSet {
            chains: vec![Box::new([])],
            index,
        }
    }

    fn intern(&mut self, chain: Vec<Target>) -> Result<u16, RoutesError> {
        if let Some(&id) = self.index.get(&chain) {
            return Ok(id);
        }
        let id = u16::try_from(self.chains.len())
            .map_err(|_| RoutesError::TooManyChains(self.chains.len()))?;
        self.chains.push(chain.clone().into_boxed_slice());
        self.index.insert(chain, id);
        Ok(id)
    }
}

impl Routes {
    /// Builds routes for policies (in precedence order) and built-in
    /// devices (after every policy). Built-ins only claim ports and MMIO.
    pub fn build(
        policies: &[&Subscriptions],
        builtins: &[(Vec<RangeInclusive<u16>>, Vec<GpaRange>)],
    ) -> Result<Routes, RoutesError> {
        let mut chains = ChainSet::new();
        let targets = policies
            .iter()
            .enumerate()
            .map(|(i, s)| (Target::Policy(i as u16), s.ports.clone(), s.mmio.clone()))
            .chain(
                builtins
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (Target::Builtin(i as u16), b.0.clone(), b.1.clone())),
            )
            .collect::<Vec<_>>();

        // Sweep the ports in runs where the set of claimants is constant,
        // rather than building a list for each of the 65 536 ports: the
        // routes are rebuilt on every hot swap.
        let mut cuts: Vec<u32> = vec![0, 0x10000];
        for (_, ports, _) in &targets {
            for r in ports {
                cuts.extend([u32::from(*r.start()), u32::from(*r.end()) + 1]);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut ports = vec![0u16; 0x10000].into_boxed_slice();
        for run in cuts.windows(2) {
            let (first, end) = (run[0], run[1]);
            let mut list: Vec<Target> = Vec::new();
            for (target, claimed, _) in &targets {
                let claims = claimed
                    .iter()
                    .any(|r| u32::from(*r.start()) <= first && first <= u32::from(*r.end()));
                if claims && !list.contains(target) {
                    list.push(*target);
                }
            }
            if !list.is_empty() {
                ports[first as usize..end as usize].fill(chains.intern(list)?);
            }
        }

        let mmio_ranges: Vec<(u64, u64, Target)> = targets
            .iter()
            .flat_map(|(t, _, mmio)| {
                mmio.iter()
                    .filter(|r| r.len > 0)
                    .map(move |r| (r.base, r.base.saturating_add(r.len - 1), *t))
            })
            .collect();
        let mmio = intervals(&mmio_ranges, &mut chains)?;

        let msr_ranges: Vec<(u32, u32, Target)> = policies
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.msrs
                    .iter()
                    .map(move |r| (*r.start(), *r.end(), Target::Policy(i as u16)))
            })
            .collect();
        let msrs = intervals(&msr_ranges, &mut chains)?;
        let msr_filter = filter_ranges(&msr_ranges)?;

        let mut event_chain = |pick: fn(&Subscriptions) -> bool| {
            let list = policies
                .iter()
                .enumerate()
                .filter(|(_, s)| pick(s))
                .map(|(i, _)| Target::Policy(i as u16))
                .collect::<Vec<_>>();
            chains.intern(list)
        };
        let hlt = event_chain(|s| s.events.hlt)?;
        let shutdown = event_chain(|s| s.events.shutdown)?;
        let debug = event_chain(|s| s.events.debug)?;
        let mem_violation = event_chain(|s| s.events.mem_violation)?;

        Ok(Routes {
            chains: chains.chains,
            ports,
            mmio,
            msrs,
            hlt,
            shutdown,
            debug,
            mem_violation,
            msr_filter,
        })
    }

    /// Routes with no subscribers at all: everything goes to the default.
    pub fn empty() -> Routes {
        Routes::build(&[], &[]).expect("empty routes always build")
    }

    /// MSR ranges the KVM filter must send to user space: the merged union
    /// of every subscription, split to KVM's bitmap size limit.
    pub fn msr_filter(&self) -> &[RangeInclusive<u32>] {
        &self.msr_filter
    }

    fn chain(&self, id: u16) -> Route<'_> {
        match self.chains.get(usize::from(id)) {
            Some(c) if !c.is_empty() => Route::Chain(c),
            _ => Route::Default,
        }
    }
}

/// Builds an interval table with exact inclusive boundaries.
fn intervals<T>(
    ranges: &[(T, T, Target)],
    chains: &mut ChainSet,
) -> Result<IntervalTable<T>, RoutesError>
where
    T: Copy + Ord + num_like::Step,
{
    // Boundaries: every range start, and every range end + 1.
    let mut cuts: Vec<T> = Vec::new();
    for &(first, last, _) in ranges {
        cuts.push(first);
        if let Some(next) = last.next() {
            cuts.push(next);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut entries: Vec<(T, T, u16)> = Vec::new();
    for (i, &start) in cuts.iter().enumerate() {
        let mut chain: Vec<Target> = Vec::new();
        for &(f, l, t) in ranges {
            if f <= start && start <= l && !chain.contains(&t) {
                chain.push(t);
            }
        }
        if chain.is_empty() {
            continue;
        }
        let last = match cuts.get(i + 1) {
            Some(next) => next.prev().unwrap_or(start),
            None => T::MAX,
        };
        let id = chains.intern(chain)?;
        entries.push((start, last, id));
    }
    Ok(IntervalTable { entries })
}

/// Merges MSR ranges and splits them to KVM's per-range bitmap limit.
fn filter_ranges(ranges: &[(u32, u32, Target)]) -> Result<Vec<RangeInclusive<u32>>, RoutesError> {
    let mut sorted: Vec<(u32, u32)> = ranges.iter().map(|r| (r.0, r.1)).collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (f, l) in sorted {
        match merged.last_mut() {
            Some(last) if f <= last.1.saturating_add(1) => last.1 = last.1.max(l),
            _ => merged.push((f, l)),
        }
    }
    let mut out = Vec::new();
    for (f, l) in merged {
        let mut start = f;
        loop {
            let end = l.min(start.saturating_add(MAX_MSRS_PER_FILTER_RANGE - 1));
            out.push(start..=end);
            if end == l {
                break;
            }
            start = end + 1;
        }
    }
    if out.len() > MAX_MSR_FILTER_RANGES {
        return Err(RoutesError::TooManyMsrRanges { needed: out.len() });
    }
    Ok(out)
}

mod num_like {
    /// Successor and predecessor for the integer types routes index by.
    pub trait Step: Sized {
        const MAX: Self;
        fn next(self) -> Option<Self>;
        fn prev(self) -> Option<Self>;
    }
    impl Step for u64 {
        const MAX: Self = u64::MAX;
        fn next(self) -> Option<Self> {
            self.checked_add(1)
        }
        fn prev(self) -> Option<Self> {
            self.checked_sub(1)
        }
    }
    impl Step for u32 {
        const MAX: Self = u32::MAX;
        fn next(self) -> Option<Self> {
            self.checked_add(1)
        }
        fn prev(self) -> Option<Self> {
            self.checked_sub(1)
        }
    }
}

/// Picks who answers `event`. Pure and allocation-free.
pub fn classify<'a>(event: &ExitEvent, routes: &'a Routes) -> Route<'a> {
    match event.kind {
        ExitKind::Io(io) => routes.chain(routes.ports[usize::from(io.port)]),
        ExitKind::Mmio(m) => match routes.mmio.lookup(m.gpa) {
            Some(id) => routes.chain(id),
            None => Route::Default,
        },
        ExitKind::Msr(m) => match routes.msrs.lookup(m.index) {
            Some(id) => routes.chain(id),
            None => Route::Default,
        },
        ExitKind::MemViolation(_) => routes.chain(routes.mem_violation),
        ExitKind::Debug(_) => routes.chain(routes.debug),
        ExitKind::Hlt => routes.chain(routes.hlt),
        ExitKind::Shutdown { .. } => routes.chain(routes.shutdown),
    }
}

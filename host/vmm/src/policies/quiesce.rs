//! Bringing every vCPU to an exit boundary and holding it there, so that
//! a policy change (instances, routes, MSR filter, page protections) takes
//! effect on all vCPUs at once (ADR 0003).
//!
//! A vCPU parks at the top of its run loop, after it has completed the
//! exit in flight and before it re-enters the guest; it hands its policy
//! instances to the coordinator and waits for a [`Handover`]. A vCPU that
//! has ended leaves and is not waited for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use wasmvisor_exit::Routes;
use wasmvisor_kvm::VcpuState;

use crate::policies::slot::VcpuPolicy;

/// The instances one vCPU holds, by policy slot (`None`: unloaded).
pub(crate) type Instances = Vec<Option<VcpuPolicy>>;

/// What a parked vCPU resumes with.
pub(crate) struct Handover {
    pub policies: Instances,
    /// New routes, or `None` to keep the current ones.
    pub routes: Option<Arc<Routes>>,
    /// Policy names by slot, for the vCPU's statistics.
    pub names: Vec<String>,
    /// The state to put into the vCPU before it runs again (a reset).
    pub apply: Option<Box<VcpuState>>,
}

impl Handover {
    /// Resume with `policies` and nothing else changed.
    pub fn unchanged(policies: Instances) -> Handover {
        Handover {
            policies,
            routes: None,
            names: Vec::new(),
            apply: None,
        }
    }
}

/// What a vCPU parks with: its instances and, when the pause asked for
/// it, its state, read after its last exit was completed.
pub(crate) struct Parked {
    pub policies: Instances,
    pub state: Option<Result<Box<VcpuState>, String>>,
}

#[derive(Default)]
struct State {
    alive: Vec<bool>,
    parked: Vec<Option<Parked>>,
    handover: Vec<Option<Handover>>,
}

/// A per-vCPU counter on its own cache line, so that vCPUs publishing
/// their exit counts do not contend.
#[repr(align(64))]
#[derive(Default)]
struct PaddedCount(AtomicU64);

/// The pause point shared by the vCPU threads and the coordinator.
pub(crate) struct Quiesce {
    /// Checked by every vCPU after each exit: one load on the hot path.
    requested: AtomicBool,
    /// Parking vCPUs read their state for the coordinator (snapshots).
    capture: AtomicBool,
    /// Held by whoever pauses the vCPUs (a policy change, a snapshot, a
    /// reset), so that only one coordinator pauses at a time.
    coordinator: Mutex<()>,
    /// Exits each vCPU has handled, published after each exit, so a
    /// change can report how many exits were handled while it ran.
    exits: Vec<PaddedCount>,
    state: Mutex<State>,
    changed: Condvar,
}

/// The vCPUs held at their exit boundary, with their instances.
pub(crate) struct Paused {
    pub vcpus: Vec<(usize, Instances)>,
    /// Their states, by the same order, when the pause captured them.
    pub states: Vec<Option<Result<Box<VcpuState>, String>>>,
}

impl Quiesce {
    pub fn new(vcpus: usize) -> Quiesce {
        Quiesce {
            requested: AtomicBool::new(false),
            capture: AtomicBool::new(false),
            coordinator: Mutex::new(()),
            exits: (0..vcpus).map(|_| PaddedCount::default()).collect(),
            state: Mutex::new(State {
                alive: vec![true; vcpus],
                parked: (0..vcpus).map(|_| None).collect(),
                handover: (0..vcpus).map(|_| None).collect(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a vCPU should park now.
    #[inline]
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// vCPU side: publishes how many exits this vCPU has handled.
    #[inline]
    pub fn note_exits(&self, vcpu: usize, exits: u64) {
        if let Some(c) = self.exits.get(vcpu) {
            c.0.store(exits, Ordering::Relaxed);
        }
    }

    /// Exits handled so far, summed over the vCPUs.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }

    /// vCPU side: whether this pause wants the vCPU's state with it.
    pub fn capture_wanted(&self) -> bool {
        self.capture.load(Ordering::Acquire)
    }

    /// Becomes the one coordinator, waiting for any other to finish.
    pub fn coordinate(&self) -> MutexGuard<'_, ()> {
        self.coordinator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Becomes the coordinator if nobody else is; a vCPU thread uses this
    /// and parks instead when another coordinator is pausing it.
    pub fn try_coordinate(&self) -> Option<MutexGuard<'_, ()>> {
        match self.coordinator.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// vCPU side: parks with `parked` until the coordinator resumes it.
    /// Returns at once, handing the instances back, if no pause is on.
    pub fn park(&self, vcpu: usize, parked: Parked) -> Handover {
        let mut state = self.lock();
        if !self.requested() {
            return Handover::unchanged(parked.policies);
        }
        state.parked[vcpu] = Some(parked);
        self.changed.notify_all();
        loop {
            if let Some(h) = state.handover[vcpu].take() {
                return h;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// vCPU side: this vCPU has ended and will not park again.
    pub fn leave(&self, vcpu: usize) {
        let mut state = self.lock();
        state.alive[vcpu] = false;
        self.changed.notify_all();
    }

    /// Coordinator side: asks every live vCPU to park and waits until they
    /// all have, calling `kick` to pull them out of the guest (again every
    /// millisecond, in case a kick raced with KVM_RUN). Gives up after
    /// `timeout`, resuming those that had parked. The caller holds
    /// [`Quiesce::coordinate`].
    pub fn pause(&self, kick: &dyn Fn(), timeout: Duration) -> Result<Paused, String> {
        self.pause_others(None, false, kick, timeout)
    }

    /// [`Quiesce::pause`] for a coordinator that is itself vCPU `me`
    /// (which does not park), and with each parking vCPU's state when
    /// `capture` is set.
    pub fn pause_others(
        &self,
        me: Option<usize>,
        capture: bool,
        kick: &dyn Fn(),
        timeout: Duration,
    ) -> Result<Paused, String> {
        let started = Instant::now();
        self.capture.store(capture, Ordering::Release);
        self.requested.store(true, Ordering::Release);
        let mut state = self.lock();
        // Alone (one vCPU, the coordinator itself): nobody to pull out of
        // the guest, and a kick would only interrupt the coordinator's
        // own next KVM_RUN.
        let others = (0..state.alive.len()).any(|i| state.alive[i] && Some(i) != me);
        if others {
            drop(state);
            kick();
            state = self.lock();
        }
        loop {
            let waiting: Vec<usize> = (0..state.alive.len())
                .filter(|&i| state.alive[i] && state.parked[i].is_none() && Some(i) != me)
                .collect();
            if waiting.is_empty() {
                break;
            }
            if started.elapsed() >= timeout {
                drop(state);
                self.resume(Vec::new());
                return Err(format!(
                    "vCPU {} did not reach an exit boundary within {} ms",
                    waiting[0],
                    timeout.as_millis()
                ));
            }
            let (s, _) = self
                .changed
                .wait_timeout(state, Duration::from_millis(1))
                .unwrap_or_else(PoisonError::into_inner);
            state = s;
            drop(state);
            kick();
            state = self.lock();
        }
        let mut vcpus = Vec::new();
        let mut states = Vec::new();
        for (i, p) in state.parked.iter_mut().enumerate() {
            if let Some(p) = p.take() {
                vcpus.push((i, p.policies));
                states.push(p.state);
            }
        }
        Ok(Paused { vcpus, states })
    }

    /// Coordinator side: hands each parked vCPU its instances and lets all
    /// of them go. A parked vCPU missing from `handovers` gets back what it
    /// parked with.
    pub fn resume(&self, handovers: Vec<(usize, Handover)>) {
        let mut state = self.lock();
        for (i, h) in handovers {
            state.handover[i] = Some(h);
        }
        for i in 0..state.parked.len() {
            if let Some(p) = state.parked[i].take() {
                state.handover[i] = Some(Handover::unchanged(p.policies));
            }
        }
        self.capture.store(false, Ordering::Release);
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_live_vcpu_parks_before_the_pause_returns() {
        let q = Arc::new(Quiesce::new(3));
        let exits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let (q, exits, stop) = (q.clone(), exits.clone(), stop.clone());
                std::thread::spawn(move || {
                    if i == 2 {
                        q.leave(i);
                        return 0;
                    }
                    let mut resumed = 0;
                    while !stop.load(Ordering::Acquire) {
                        exits.fetch_add(1, Ordering::Relaxed);
                        if q.requested() {
                            let parked = Parked {
                                policies: Vec::new(),
                                state: None,
                            };
                            let h = q.park(i, parked);
                            resumed += h.names.len();
                        }
                    }
                    q.leave(i);
                    resumed
                })
            })
            .collect();
        for _ in 0..20 {
            let paused = q.pause(&|| {}, Duration::from_secs(5)).expect("pause");
            let mut ids: Vec<usize> = paused.vcpus.iter().map(|(i, _)| *i).collect();
            ids.sort();
            // vCPU 2 may or may not have left yet on the first round.
            assert!(ids.starts_with(&[0, 1]), "{ids:?}");
            let frozen = exits.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
            assert_eq!(
                exits.load(Ordering::Relaxed),
                frozen,
                "nobody runs while paused"
            );
            let hand = |i| {
                (
                    i,
                    Handover {
                        names: vec!["x".into()],
                        ..Handover::unchanged(Vec::new())
                    },
                )
            };
            q.resume(ids.into_iter().map(hand).collect());
        }
        stop.store(true, Ordering::Release);
        let resumed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(resumed, 40, "each of two vCPUs resumed 20 times");
    }

    #[test]
    fn a_vcpu_that_never_parks_times_the_pause_out() {
        let q = Quiesce::new(2);
        q.leave(1);
        let err = q
            .pause(&|| {}, Duration::from_millis(20))
            .err()
            .expect("vCPU 0 never parks");
        assert!(err.contains("vCPU 0 did not reach"), "{err}");
        assert!(!q.requested(), "the request is withdrawn");
    }
}

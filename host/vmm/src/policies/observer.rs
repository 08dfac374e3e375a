//! Observer policies (`@observe`, ADR 0008): a policy that only watches
//! the exits it subscribed to never holds the vCPU. The vCPU copies each
//! exit into a bounded ring of its own and goes on to the next subscriber
//! (or the built-in device or the default handler) at once; a thread of
//! the observer's own drains every vCPU's ring in batches into the
//! policy's `handle-exit`, on an instance and store of its own, with its
//! own deadline. A full ring drops the exit and counts it; the vCPU never
//! waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::vcpu::LentVcpu;
use wasmvisor_exit::ExitEvent;
use wasmvisor_policy::{PolicyInstance, Shared};

/// Ring capacity of `@observe` without a number.
pub const DEFAULT_RING: usize = 4096;
/// The drain thread's nice value (Linux applies it per thread).
const OBSERVER_NICE: i32 = 10;
/// How often the drainer looks at the rings when they are quiet.
const DRAIN_EVERY: Duration = Duration::from_millis(1);

/// One vCPU's ring for one observer.
pub(crate) struct ObserverRing {
    queue: Mutex<VecDeque<ExitEvent>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl ObserverRing {
    pub fn new(capacity: usize) -> ObserverRing {
        ObserverRing {
            queue: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    /// vCPU side: queues `event`, or counts it as dropped when full.
    #[inline]
    pub fn push(&self, event: &ExitEvent) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() < self.capacity {
            q.push_back(*event);
        } else {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drainer side: moves what is queued into `batch`.
    fn take(&self, batch: &mut VecDeque<ExitEvent>) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *q, batch);
    }
}

/// What an observer did over the run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ObserverStats {
    pub name: String,
    /// Exits copied into the rings.
    pub queued: u64,
    /// Exits handed to the policy.
    pub observed: u64,
    /// Exits lost to a full ring.
    pub dropped: u64,
    /// Batches drained.
    pub batches: u64,
    /// Calls that trapped or ran out of time.
    pub faults: u64,
    /// Time inside the policy's calls, on the observer's thread.
    pub time: Duration,
}

/// An observer's rings, one per vCPU, and its draining thread.
pub(crate) struct Observer {
    pub name: String,
    pub rings: Vec<Arc<ObserverRing>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ObserverStats>>,
}

impl Observer {
    /// Rings of `capacity` for `vcpus` vCPUs; the thread starts with
    /// [`Observer::start`].
    pub fn new(name: &str, vcpus: usize, capacity: usize) -> Observer {
        Observer {
            name: name.to_string(),
            rings: (0..vcpus)
                .map(|_| Arc::new(ObserverRing::new(capacity)))
                .collect(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Starts draining into `instance` (the observer's own).
    pub fn start(
        &mut self,
        mut instance: PolicyInstance<LentVcpu>,
        shared: Arc<Shared>,
    ) -> std::io::Result<()> {
        let rings = self.rings.clone();
        let stop = Arc::clone(&self.stop);
        let name = self.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("observer-{name}"))
            .spawn(move || {
                // Behind the vCPU threads when cores are short: the point
                // of an observer is that the guest does not wait for it.
                let _ = rustix::process::setpriority_process(
                    Some(rustix::thread::gettid()),
                    OBSERVER_NICE,
                );
                let mut stats = ObserverStats {
                    name,
                    ..Default::default()
                };
                let mut batch = VecDeque::new();
                let mut reported = 0;
                loop {
                    // Read the flag first: a last pass drains what the
                    // vCPUs queued before they stopped.
                    let last = stop.load(Ordering::Acquire);
                    let mut any = false;
                    for ring in &rings {
                        ring.take(&mut batch);
                        if batch.is_empty() {
                            continue;
                        }
                        any = true;
                        stats.batches += 1;
                        drain(&mut instance, &mut batch, &mut stats);
                    }
                    let dropped: u64 = rings
                        .iter()
                        .map(|r| r.dropped.load(Ordering::Relaxed))
                        .sum();
                    if dropped > reported {
                        report_drops(&shared, &stats.name, dropped - reported, dropped);
                        reported = dropped;
                    }
                    stats.dropped = dropped;
                    if last {
                        break;
                    }
                    if !any {
                        std::thread::sleep(DRAIN_EVERY);
                    }
                }
                stats
            })?;
        self.thread = Some(thread);
        Ok(())
    }

    /// Stops the thread after a last drain and returns its counters.
    pub fn finish(mut self, queued: u64) -> ObserverStats {
        self.stop.store(true, Ordering::Release);
        let mut stats = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(stats)) => stats,
            _ => ObserverStats {
                name: self.name.clone(),
                ..Default::default()
            },
        };
        stats.queued = queued;
        stats
    }
}

/// Hands a batch to the policy, one `handle-exit` per exit, with no vCPU
/// lent: its answer is ignored, since the exit was answered long ago.
fn drain(
    instance: &mut PolicyInstance<LentVcpu>,
    batch: &mut VecDeque<ExitEvent>,
    stats: &mut ObserverStats,
) {
    let started = Instant::now();
    let mut none: Option<LentVcpu> = None;
    for event in batch.drain(..) {
        match instance.handle_exit(&event, &mut none) {
            Ok(_) => stats.observed += 1,
            Err(e) => {
                stats.faults += 1;
                if stats.faults <= 3 {
                    eprintln!(
                        "wasmvisor: observer {} fault on an exit of vcpu {} (seq {}): {e}",
                        stats.name, event.vcpu, event.seq
                    );
                }
            }
        }
    }
    stats.time += started.elapsed();
}

/// One `observer-dropped` event per drain pass that found new drops.
fn report_drops(shared: &Shared, name: &str, new: u64, total: u64) {
    let json = format!("{{\"policy\":\"{name}\",\"dropped\":{new},\"total\":{total}}}");
    shared.emit_host("wasmvisor", 0, "observer-dropped", &json);
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_exit::testing::io_exit;

    #[test]
    fn a_full_ring_drops_and_counts_instead_of_waiting() {
        let ring = ObserverRing::new(3);
        for seq in 0..5 {
            let mut e = io_exit(0x80, 1, wasmvisor_exit::Direction::Write, 0);
            e.seq = seq;
            ring.push(&e);
        }
        assert_eq!(ring.dropped.load(Ordering::Relaxed), 2);
        let mut batch = VecDeque::new();
        ring.take(&mut batch);
        let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1, 2], "the first ones are kept, in order");
        ring.push(&io_exit(0x80, 1, wasmvisor_exit::Direction::Write, 0));
        batch.clear();
        ring.take(&mut batch);
        assert_eq!(batch.len(), 1, "room again once drained");
    }
}

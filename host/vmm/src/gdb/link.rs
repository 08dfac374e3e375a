//! Where the gdb stub and the vCPU threads meet.
//!
//! A vCPU gdb holds sits in [`GdbLink::hold`] on its own thread, at an
//! exit boundary, and does what the stub asks of it there (read or write
//! its registers, tell its debug state) until the stub releases it with
//! the breakpoints and single-step it is to run with. While held it still
//! parks for a quiesce, so hot swaps, snapshots and dumps work while gdb
//! has the VM stopped.
//!
//! A vCPU enters the hold in three ways: before its first instruction
//! when gdb must attach first, after a quiesce pause when gdb stops the VM
//! (`hold_wanted`), and on an exit that is gdb's (its breakpoint, its
//! single-step, a write to a page it watches), which it reports as a
//! [`Stop`]. The stub reports one stop to gdb and keeps the others queued
//! until the next resume, as gdb's all-stop mode expects.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gdbstub::target::ext::breakpoints::WatchKind;
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::{
    DebugCause, DebugState, Direction, ExitEvent, ExitKind, GuestRam, HwBreakpoint, VcpuAccess,
};
use wasmvisor_kvm::{DebuggerRegs, Vcpu};

/// Why a vCPU stopped for gdb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The single step gdb asked for is done.
    Step,
    /// An execute breakpoint of gdb's (a hardware slot, or an int3).
    Breakpoint { addr: u64, int3: bool },
    /// A data watchpoint of gdb's: `addr` is the watched address.
    Watch { addr: u64, kind: WatchKind },
    /// The guest failed (`--hold-on-fault`): the vCPU cannot run again.
    Fault,
}

/// What the stub asks a held vCPU to do.
pub(crate) enum Request {
    ReadRegs,
    WriteRegs(Box<DebuggerRegs>),
    DebugState,
    ReadMsr(u32),
}

/// A held vCPU's answer.
pub(crate) enum Reply {
    Regs(Result<Box<DebuggerRegs>, String>),
    Written(Result<(), String>),
    Debug(DebugState),
    Msr(Option<u64>),
}

/// What a released vCPU runs with: gdb's breakpoints (the same on every
/// vCPU) and whether it single-steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Release {
    pub slots: [Option<HwBreakpoint>; 4],
    pub mask: u8,
    pub step: bool,
    pub int3: bool,
}

/// What the stub's event loop is woken with.
#[derive(Debug)]
pub(crate) enum StubEvent {
    /// Bytes from gdb.
    Data(Vec<u8>),
    /// gdb closed the connection.
    Closed,
    /// A vCPU queued a stop.
    Stopped,
    /// Every vCPU has ended; the VM's exit code.
    VmEnded(u8),
}

/// A write to a page gdb watches by protection (a backend whose emulated
/// code ignores data breakpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageWatch {
    /// The watched address as gdb gave it, and its guest-physical range.
    pub addr: u64,
    pub gpa: u64,
    pub len: u64,
}

#[derive(Default)]
struct VcpuSlot {
    alive: bool,
    held: bool,
    request: Option<Request>,
    reply: Option<Reply>,
    release: Option<Release>,
}

#[derive(Default)]
struct LinkState {
    vcpus: Vec<VcpuSlot>,
    /// Stops gdb has not been told of, by arrival.
    stops: VecDeque<(usize, Stop)>,
    /// Write watchpoints kept by page protection, and the pages gdb
    /// protected for them (page GPAs).
    page_watches: Vec<PageWatch>,
    /// Where gdb planted int3s (virtual addresses).
    int3s: Vec<u64>,
    owned_pages: Vec<u64>,
    events: Option<Sender<StubEvent>>,
}

/// What [`GdbLink::hold`] needs from the vCPU's thread.
pub(crate) trait Holder {
    fn held_vcpu(&mut self) -> &mut Vcpu;
    /// Parks for a quiesce (policy change, snapshot) if one is asked for.
    fn park_if_asked(&mut self);
    /// The VM is ending.
    fn stopping(&self) -> bool;
}

/// What a vCPU does with an exit while gdb is attached.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Not gdb's: dispatch it as usual.
    No,
    /// gdb's, finished: run on.
    Done,
    /// gdb's: hold for gdb with this stop.
    Stop(Stop),
}

/// The gdb side of a VM, shared by the stub and the vCPU threads.
pub(crate) struct GdbLink {
    /// A gdb session is attached: its exits go to it first.
    attached: AtomicBool,
    /// Every vCPU is to hold (gdb stopped the VM, or waits to attach).
    hold_wanted: AtomicBool,
    state: Mutex<LinkState>,
    changed: Condvar,
}

/// How long a held vCPU waits between looks at the quiesce and the VM's
/// stop flag.
const HOLD_POLL: Duration = Duration::from_millis(5);

impl GdbLink {
    /// `hold_first`: every vCPU holds before its first instruction.
    pub fn new(vcpus: usize, hold_first: bool) -> GdbLink {
        GdbLink {
            attached: AtomicBool::new(false),
            hold_wanted: AtomicBool::new(hold_first),
            state: Mutex::new(LinkState {
                vcpus: (0..vcpus)
                    .map(|_| VcpuSlot {
                        alive: true,
                        ..VcpuSlot::default()
                    })
                    .collect(),
                ..LinkState::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- the vCPU side ----

    /// Whether a gdb session is attached.
    #[inline]
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Whether gdb wants this vCPU held (read after a park, and before the
    /// first run).
    pub fn hold_wanted(&self) -> bool {
        self.hold_wanted.load(Ordering::Acquire)
    }

    /// gdb's view of an exit on `vcpu`: a debug exit gdb caused, a write
    /// to a page gdb watches (performed here), or the guest's own int3
    /// while gdb has int3s planted (given back to the guest here).
    pub fn claims(&self, event: &ExitEvent, vcpu: &mut Vcpu, memory: &GuestRam) -> Claim {
        if !self.attached.load(Ordering::Acquire) {
            return Claim::No;
        }
        match event.kind {
            ExitKind::Debug(d) => {
                let debug = vcpu.debug_state();
                match claim_debug(&d, &debug, event.rip) {
                    Some(Stop::Breakpoint { addr, int3: true })
                        if !self.lock().int3s.contains(&addr) =>
                    {
                        match vcpu.reinject_int3() {
                            Ok(()) => Claim::Done,
                            Err(_) => Claim::No,
                        }
                    }
                    Some(stop) => Claim::Stop(stop),
                    None => Claim::No,
                }
            }
            ExitKind::Mmio(m) if m.direction == Direction::Write => {
                let state = self.lock();
                let page = m.gpa & !0xfff;
                if !state.owned_pages.contains(&page) {
                    return Claim::No;
                }
                let end = m.gpa + u64::from(m.size);
                let hit = state
                    .page_watches
                    .iter()
                    .find(|w| m.gpa < w.gpa + w.len && w.gpa < end)
                    .copied();
                drop(state);
                // The page is gdb's own: the write goes through either way.
                let bytes = m.data.to_le_bytes();
                let n = usize::from(m.size).min(8);
                if memory
                    .write_slice(&bytes[..n], GuestAddress(m.gpa))
                    .is_err()
                {
                    return Claim::No;
                }
                match hit {
                    Some(w) => Claim::Stop(Stop::Watch {
                        addr: w.addr,
                        kind: WatchKind::Write,
                    }),
                    None => Claim::Done,
                }
            }
            _ => Claim::No,
        }
    }

    /// Holds vCPU `index` for gdb until the stub releases it or the VM
    /// ends, serving the stub's requests; `stop` is queued for gdb first.
    pub fn hold(&self, index: usize, stop: Option<Stop>, h: &mut dyn Holder) {
        let mut state = self.lock();
        state.vcpus[index].held = true;
        if let Some(stop) = stop {
            state.stops.push_back((index, stop));
            if let Some(tx) = &state.events {
                let _ = tx.send(StubEvent::Stopped);
            }
        }
        self.changed.notify_all();
        loop {
            if let Some(request) = state.vcpus[index].request.take() {
                drop(state);
                let reply = serve(request, h.held_vcpu());
                state = self.lock();
                state.vcpus[index].reply = Some(reply);
                self.changed.notify_all();
                continue;
            }
            if let Some(release) = state.vcpus[index].release.take() {
                state.vcpus[index].held = false;
                self.changed.notify_all();
                drop(state);
                if let Err(e) = apply_release(h.held_vcpu(), &release) {
                    eprintln!("wasmvisor: gdb: vCPU {index}: cannot set the debug state: {e}");
                }
                return;
            }
            if h.stopping() {
                state.vcpus[index].held = false;
                self.changed.notify_all();
                return;
            }
            drop(state);
            h.park_if_asked();
            state = self.lock();
            if state.vcpus[index].request.is_none() && state.vcpus[index].release.is_none() {
                state = self
                    .changed
                    .wait_timeout(state, HOLD_POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }

    /// vCPU side: this vCPU has ended.
    pub fn leave(&self, index: usize) {
        let mut state = self.lock();
        if let Some(v) = state.vcpus.get_mut(index) {
            v.alive = false;
            v.held = false;
        }
        self.changed.notify_all();
    }

    // ---- the stub side ----

    /// A gdb session starts: stops and events go to `events`.
    pub fn attach(&self, events: Sender<StubEvent>) {
        let mut state = self.lock();
        state.events = Some(events);
        state.stops.clear();
        self.attached.store(true, Ordering::Release);
    }

    /// The session ended: exits are the policies' again.
    pub fn detach(&self) {
        self.attached.store(false, Ordering::Release);
        let mut state = self.lock();
        state.events = None;
        state.stops.clear();
    }

    /// Tells the stub's event loop, if a session is on.
    pub fn notify(&self, event: StubEvent) {
        if let Some(tx) = &self.lock().events {
            let _ = tx.send(event);
        }
    }

    /// From now on every vCPU that parks holds for gdb.
    pub fn want_hold(&self, on: bool) {
        self.hold_wanted.store(on, Ordering::Release);
    }

    /// The live vCPUs, by index.
    pub fn alive(&self) -> Vec<usize> {
        let state = self.lock();
        (0..state.vcpus.len())
            .filter(|&i| state.vcpus[i].alive)
            .collect()
    }

    /// Whether every live vCPU is held (and at least one lives).
    pub fn all_held(&self) -> bool {
        let state = self.lock();
        state.vcpus.iter().all(|v| !v.alive || v.held) && state.vcpus.iter().any(|v| v.alive)
    }

    /// Waits until every live vCPU is held; false on `timeout`.
    pub fn wait_all_held(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.vcpus.iter().all(|v| !v.alive || v.held) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Asks held vCPU `index` to carry out `request`.
    pub fn ask(&self, index: usize, request: Request, timeout: Duration) -> Result<Reply, String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        match state.vcpus.get(index) {
            Some(v) if v.alive && v.held => {}
            Some(v) if !v.alive => return Err(format!("vCPU {index} has ended")),
            Some(_) => return Err(format!("vCPU {index} is running")),
            None => return Err(format!("there is no vCPU {index}")),
        }
        state.vcpus[index].reply = None;
        state.vcpus[index].request = Some(request);
        self.changed.notify_all();
        loop {
            if let Some(reply) = state.vcpus[index].reply.take() {
                return Ok(reply);
            }
            if !state.vcpus[index].alive || !state.vcpus[index].held {
                state.vcpus[index].request = None;
                return Err(format!("vCPU {index} stopped being held"));
            }
            let now = Instant::now();
            if now >= deadline {
                state.vcpus[index].request = None;
                return Err(format!("vCPU {index} did not answer"));
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Lets the held vCPUs in `plan` run, each with its release.
    pub fn release(&self, plan: &[(usize, Release)]) {
        let mut state = self.lock();
        for &(i, r) in plan {
            if let Some(v) = state.vcpus.get_mut(i) {
                if v.alive && v.held {
                    v.release = Some(r);
                }
            }
        }
        self.changed.notify_all();
    }

    /// Drops queued stops that `keep` rejects.
    pub fn prune_stops(&self, keep: impl Fn(usize, &Stop) -> bool) {
        self.lock().stops.retain(|(i, s)| keep(*i, s));
    }

    /// Whether a queued stop belongs to one of `vcpus`.
    pub fn has_stop_for(&self, vcpus: &[usize]) -> bool {
        self.lock().stops.iter().any(|(i, _)| vcpus.contains(i))
    }

    /// Takes the first queued stop of one of `vcpus`.
    pub fn take_stop_for(&self, vcpus: &[usize]) -> Option<(usize, Stop)> {
        let mut state = self.lock();
        let at = state.stops.iter().position(|(i, _)| vcpus.contains(i))?;
        state.stops.remove(at)
    }

    /// The write watchpoints kept by page protection, and the pages gdb
    /// protected for them.
    pub fn set_page_watches(&self, watches: Vec<PageWatch>, owned_pages: Vec<u64>) {
        let mut state = self.lock();
        state.page_watches = watches;
        state.owned_pages = owned_pages;
    }

    /// Where gdb's int3s are.
    pub fn set_int3s(&self, addrs: Vec<u64>) {
        self.lock().int3s = addrs;
    }
}

/// The stop a debug exit means to gdb, if it is gdb's: a slot it holds
/// fired (named in DR6, or as the exit's slot), a step it asked for, an
/// int3 it planted, or a policy's execute breakpoint fired where gdb has
/// one too (gdb first: the policy's fires again as gdb steps off it).
fn claim_debug(d: &wasmvisor_exit::DebugExit, debug: &DebugState, rip: u64) -> Option<Stop> {
    let gdbs = (0..4u8).filter(|&s| debug.debugger_holds(s));
    let fired = gdbs
        .clone()
        .find(|&s| d.dr6 & (1 << s) != 0 || d.slot == Some(s));
    let at_rip = || {
        gdbs.clone().find(|&s| {
            matches!(debug.hw[usize::from(s)], Some(bp)
                if bp.kind == wasmvisor_exit::HwBreakpointKind::Execute && bp.gva == rip)
        })
    };
    let slot = match (fired, d.cause) {
        (Some(s), _) => Some(s),
        (None, DebugCause::HwBreakpoint) => at_rip(),
        _ => None,
    };
    if let Some(slot) = slot {
        let bp = debug.hw[usize::from(slot)]?;
        return Some(match bp.kind {
            wasmvisor_exit::HwBreakpointKind::Execute => Stop::Breakpoint {
                addr: bp.gva,
                int3: false,
            },
            wasmvisor_exit::HwBreakpointKind::Write => Stop::Watch {
                addr: bp.gva,
                kind: WatchKind::Write,
            },
            wasmvisor_exit::HwBreakpointKind::ReadWrite => Stop::Watch {
                addr: bp.gva,
                kind: WatchKind::ReadWrite,
            },
        });
    }
    match d.cause {
        DebugCause::SwBreakpoint if debug.debugger_int3 => Some(Stop::Breakpoint {
            addr: rip,
            int3: true,
        }),
        DebugCause::SingleStep if debug.debugger_step => Some(Stop::Step),
        _ => None,
    }
}

/// Carries out a request on the held vCPU.
fn serve(request: Request, vcpu: &mut Vcpu) -> Reply {
    match request {
        Request::ReadRegs => Reply::Regs(
            vcpu.debugger_regs()
                .map(Box::new)
                .map_err(|e| e.to_string()),
        ),
        Request::WriteRegs(regs) => {
            Reply::Written(vcpu.set_debugger_regs(&regs).map_err(|e| e.to_string()))
        }
        Request::DebugState => Reply::Debug(vcpu.debug_state()),
        Request::ReadMsr(index) => Reply::Msr(vcpu.host_rdmsr(index).ok().flatten()),
    }
}

/// Puts gdb's breakpoints and step into the vCPU's debug state, leaving
/// the policies' slots alone.
fn apply_release(vcpu: &mut Vcpu, r: &Release) -> Result<(), String> {
    let mut d = vcpu.debug_state();
    let next = merge(d, r);
    if next != d {
        d = next;
        vcpu.set_debug_state(d).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `d` with gdb's part replaced by `r`.
pub(crate) fn merge(mut d: DebugState, r: &Release) -> DebugState {
    for i in 0..4u8 {
        let gdbs = r.mask & (1 << i) != 0;
        if gdbs {
            d.hw[usize::from(i)] = r.slots[usize::from(i)];
        } else if d.debugger_holds(i) {
            d.hw[usize::from(i)] = None;
        }
    }
    // A policy breakpoint waiting to be re-armed in a slot gdb now holds
    // is gone.
    if let Some((slot, _)) = d.rearm {
        if r.mask & (1 << slot) != 0 {
            d.rearm = None;
        }
    }
    d.debugger_slots = r.mask;
    d.debugger_step = r.step;
    d.debugger_int3 = r.int3;
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_exit::{DebugExit, HwBreakpointKind};

    fn bp(kind: HwBreakpointKind, gva: u64) -> HwBreakpoint {
        HwBreakpoint { kind, gva, len: 1 }
    }

    #[test]
    fn a_release_replaces_only_gdbs_slots() {
        let mut d = DebugState::default();
        d.hw[1] = Some(bp(HwBreakpointKind::Execute, 0x1000)); // a policy's
        d.hw[0] = Some(bp(HwBreakpointKind::Execute, 0x2000)); // gdb's, old
        d.debugger_slots = 0b0001;
        let mut r = Release {
            mask: 0b0100,
            step: true,
            ..Release::default()
        };
        r.slots[2] = Some(bp(HwBreakpointKind::Write, 0x3000));
        let m = merge(d, &r);
        assert_eq!(m.hw[0], None, "gdb's old slot is freed");
        assert_eq!(m.hw[1], d.hw[1], "the policy's slot stays");
        assert_eq!(m.hw[2], r.slots[2]);
        assert!(m.debugger_holds(2) && !m.debugger_holds(0) && m.debugger_step);
        // Detaching clears everything gdb had.
        let m = merge(m, &Release::default());
        assert_eq!(m.hw[2], None);
        assert_eq!(m.hw[1], d.hw[1]);
        assert!(!m.debugger_step && m.debugger_slots == 0);
    }

    #[test]
    fn debug_exits_are_gdbs_only_in_its_slots_and_steps() {
        let mut d = DebugState::default();
        d.hw[0] = Some(bp(HwBreakpointKind::Execute, 0x1000)); // a policy's
        d.hw[3] = Some(bp(HwBreakpointKind::Execute, 0x2000));
        d.debugger_slots = 0b1000;
        let exit = |cause, slot| DebugExit {
            cause,
            slot,
            dr6: 0,
            dr7: 0,
        };
        assert_eq!(
            claim_debug(&exit(DebugCause::HwBreakpoint, Some(0)), &d, 0x1000),
            None
        );
        assert_eq!(
            claim_debug(&exit(DebugCause::HwBreakpoint, Some(3)), &d, 0x2000),
            Some(Stop::Breakpoint {
                addr: 0x2000,
                int3: false
            })
        );
        assert_eq!(
            claim_debug(&exit(DebugCause::SingleStep, None), &d, 0x5),
            None,
            "a policy's step"
        );
        // The policy's breakpoint at the address of gdb's: gdb first.
        d.hw[0] = Some(bp(HwBreakpointKind::Execute, 0x2000));
        assert_eq!(
            claim_debug(&exit(DebugCause::HwBreakpoint, Some(0)), &d, 0x2000),
            Some(Stop::Breakpoint {
                addr: 0x2000,
                int3: false
            })
        );
        // Named in DR6 alongside the policy's.
        let both = DebugExit {
            dr6: 0b1001,
            ..exit(DebugCause::HwBreakpoint, Some(0))
        };
        assert!(claim_debug(&both, &d, 0x2000).is_some());
        d.debugger_step = true;
        assert_eq!(
            claim_debug(&exit(DebugCause::SingleStep, None), &d, 0x5),
            Some(Stop::Step)
        );
    }

    #[test]
    fn stops_queue_in_order_and_prune() {
        let link = GdbLink::new(3, false);
        {
            let mut s = link.lock();
            s.stops.push_back((1, Stop::Step));
            s.stops.push_back((
                2,
                Stop::Breakpoint {
                    addr: 9,
                    int3: false,
                },
            ));
        }
        assert!(link.has_stop_for(&[2]) && !link.has_stop_for(&[0]));
        link.prune_stops(|_, s| *s != Stop::Step);
        assert_eq!(link.take_stop_for(&[0, 1]), None);
        assert_eq!(link.take_stop_for(&[2]).map(|(i, _)| i), Some(2));
        assert_eq!(link.take_stop_for(&[0, 1, 2]), None);
        assert_eq!(link.alive(), vec![0, 1, 2]);
        link.leave(1);
        assert_eq!(link.alive(), vec![0, 2]);
        assert!(link
            .ask(1, Request::DebugState, Duration::from_millis(1))
            .is_err());
    }
}

//! The VM as gdbstub's target: vCPUs as threads, registers and memory of
//! the held vCPUs, breakpoints in the debug-register slots gdb may use,
//! and resuming them.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint as HwBreakpointExt, HwBreakpointOps, HwWatchpoint,
    HwWatchpointOps, SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmdOps};
use gdbstub::target::ext::target_description_xml_override::{
    TargetDescriptionXmlOverride, TargetDescriptionXmlOverrideOps,
};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::{
    translate, GpaRange, GuestRam, HwBreakpoint, HwBreakpointKind, MemoryProtector, PagingState,
    Protection,
};
use wasmvisor_kvm::DebuggerRegs;
use wasmvisor_policy::KernelProfile;

use super::arch::{from_gdb, to_gdb, Layout, SystemRegs, X86_64System};
use super::link::{GdbLink, PageWatch, Release, Reply, Request, Stop};
use super::table::{dr_kind, Entry, Int3, Origin, SlotError, Table, Watched};
use crate::policies::quiesce::{Handover, Quiesce};
use crate::vcpu::worker::StopFlag;

/// How long the vCPUs get to reach an exit boundary or answer.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// EFAULT, for memory gdb cannot reach.
const EFAULT: u8 = 14;
/// ENOSPC: no debug-register slot left.
const ENOSPC: u8 = 28;
/// EINVAL: a watch length DR0-3 cannot express.
const EINVAL: u8 = 22;

/// A gdb-side failure: the message reaches gdb as an error reply, and
/// the stub logs it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GdbError(pub String);

/// The parts of the VM the stub works on.
pub(crate) struct VmParts {
    pub quiesce: Arc<Quiesce>,
    pub kick: Arc<dyn Fn() + Send + Sync>,
    pub memory: GuestRam,
    pub protector: Arc<dyn MemoryProtector>,
    pub control: Arc<StopFlag>,
    pub kernel: Option<Arc<KernelProfile>>,
}

/// What this KVM backend does with a guest's debugging (probed once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub int3: bool,
    pub data_breakpoints: bool,
}

/// What gdb asked one vCPU to do on the next resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Continue,
    Step,
}

/// The VM, as gdb debugs it.
pub(crate) struct VmTarget {
    pub link: Arc<GdbLink>,
    vm: VmParts,
    table: Table,
    caps: Option<Caps>,
    /// Registers of held vCPUs, read once per stop.
    regs: Vec<Option<DebuggerRegs>>,
    actions: Vec<Option<Action>>,
    scheduler_lock: bool,
    /// The vCPUs the last resume let run: their stops are reported.
    running: Vec<usize>,
    /// Lines for gdb's console at the next resume, each said once.
    notices: Vec<String>,
    said: BTreeSet<&'static str>,
    /// Pages gdb write-protected for its page watches.
    owned_pages: Vec<u64>,
    /// The vCPU of the last stop (memory and `monitor` use it).
    pub current: usize,
    /// gdb asked to kill the VM.
    pub killed: bool,
    /// The register layout of this session ([`VmTarget::choose_layout`]).
    layout: Layout,
}

pub(crate) fn tid(vcpu: usize) -> Tid {
    Tid::new(vcpu + 1).expect("vCPU index + 1 is never 0")
}

fn vcpu_of(tid: Tid) -> usize {
    tid.get() - 1
}

impl VmTarget {
    pub fn new(link: Arc<GdbLink>, vm: VmParts, vcpus: usize) -> VmTarget {
        VmTarget {
            link,
            vm,
            table: Table::default(),
            caps: None,
            regs: vec![None; vcpus],
            actions: vec![None; vcpus],
            scheduler_lock: false,
            running: Vec::new(),
            notices: Vec::new(),
            said: BTreeSet::new(),
            owned_pages: Vec::new(),
            current: 0,
            killed: false,
            layout: Layout::default(),
        }
    }

    /// Picks the session's register layout from the mode of the first
    /// live vCPU (held, as gdb has just attached): i386 unless it is in
    /// long mode. gdb reads the description once, so the layout holds
    /// until gdb attaches again.
    pub fn choose_layout(&mut self) {
        let Some(&first) = self.link.alive().first() else {
            return;
        };
        self.layout = match self.vcpu_regs(first) {
            Ok(r) => Layout::of(&r),
            Err(_) => Layout::X86_64,
        };
        if self.layout == Layout::I386 {
            eprintln!("wasmvisor: gdb: vCPU {first} is not in long mode: i386 registers");
        }
    }

    /// Says `line` to gdb's console (and wasmvisor's stderr) once per
    /// session, under `key`.
    fn say_once(&mut self, key: &'static str, line: String) {
        if self.said.insert(key) {
            eprintln!("wasmvisor: gdb: {line}");
            self.notices.push(line);
        }
    }

    /// A signal gdb passes on resuming (`handle SIGSEGV pass` after a
    /// guest failure) means nothing to a vCPU: it is dropped, once said.
    fn drop_signal(&mut self, signal: Option<Signal>) {
        if let Some(s) = signal {
            self.say_once(
                "signals",
                format!("a vCPU takes no signals: {s} is dropped"),
            );
        }
    }

    /// Lines for gdb's console, taken.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn caps(&mut self) -> Caps {
        if let Some(c) = self.caps {
            return c;
        }
        let c = Caps {
            int3: wasmvisor_kvm::traps_int3().unwrap_or(false),
            data_breakpoints: wasmvisor_kvm::traps_data_breakpoints().unwrap_or(false),
        };
        self.caps = Some(c);
        c
    }

    /// Holds every live vCPU at an exit boundary: a quiesce pause brings
    /// running ones out of the guest, and they hold when it lets them go.
    pub fn stop_all(&mut self) -> Result<(), GdbError> {
        self.link.want_hold(true);
        if !self.link.all_held() {
            let _coordinator = self.vm.quiesce.coordinate();
            let paused = self
                .vm
                .quiesce
                .pause(&*self.vm.kick, PAUSE_TIMEOUT)
                .map_err(GdbError)?;
            let handovers = paused
                .vcpus
                .into_iter()
                .map(|(i, p)| (i, Handover::unchanged(p)))
                .collect();
            self.vm.quiesce.resume(handovers);
        }
        if self.link.wait_all_held(PAUSE_TIMEOUT) {
            Ok(())
        } else {
            Err(GdbError("a vCPU did not stop within 2 s".to_string()))
        }
    }

    /// The next stop to report, for a vCPU the last resume let run.
    pub fn take_stop(&mut self) -> Option<MultiThreadStopReason<u64>> {
        let (i, stop) = self.link.take_stop_for(&self.running)?;
        self.current = i;
        Some(self.reason(i, stop))
    }

    fn reason(&self, i: usize, stop: Stop) -> MultiThreadStopReason<u64> {
        let tid = tid(i);
        match stop {
            Stop::Step => MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            },
            Stop::Breakpoint { int3: true, .. } => MultiThreadStopReason::SwBreak(tid),
            Stop::Breakpoint { addr, .. } if self.table.software_at(addr) => {
                MultiThreadStopReason::SwBreak(tid)
            }
            Stop::Breakpoint { .. } => MultiThreadStopReason::HwBreak(tid),
            Stop::Watch { addr, kind } => MultiThreadStopReason::Watch {
                tid,
                kind: self.table.watch_at(addr).unwrap_or(kind),
                addr,
            },
            Stop::Fault => MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGSEGV,
            },
        }
    }

    /// The stop a Ctrl-C reports: SIGINT on the current vCPU.
    pub fn interrupted(&mut self) -> MultiThreadStopReason<u64> {
        let alive = self.link.alive();
        if !alive.contains(&self.current) {
            self.current = alive.first().copied().unwrap_or(0);
        }
        MultiThreadStopReason::SignalWithThread {
            tid: tid(self.current),
            signal: Signal::SIGINT,
        }
    }

    fn ask(&self, vcpu: usize, request: Request) -> Result<Reply, GdbError> {
        self.link
            .ask(vcpu, request, PAUSE_TIMEOUT)
            .map_err(GdbError)
    }

    fn vcpu_regs(&mut self, vcpu: usize) -> Result<DebuggerRegs, GdbError> {
        if let Some(r) = self.regs.get(vcpu).copied().flatten() {
            return Ok(r);
        }
        match self.ask(vcpu, Request::ReadRegs)? {
            Reply::Regs(Ok(r)) => {
                if let Some(slot) = self.regs.get_mut(vcpu) {
                    *slot = Some(*r);
                }
                Ok(*r)
            }
            Reply::Regs(Err(e)) => Err(GdbError(e)),
            _ => Err(GdbError("unexpected reply".into())),
        }
    }

    fn paging(&mut self, vcpu: usize) -> Result<PagingState, GdbError> {
        let r = self.vcpu_regs(vcpu)?;
        Ok(PagingState {
            cr0: r.sregs.cr0,
            cr3: r.sregs.cr3,
            cr4: r.sregs.cr4,
            efer: r.sregs.efer,
        })
    }

    /// The guest-physical address of `gva` in `vcpu`'s address space.
    pub fn translate(&mut self, vcpu: usize, gva: u64) -> Result<u64, GdbError> {
        let paging = self.paging(vcpu)?;
        translate(&self.vm.memory, &paging, gva)
            .map(|t| t.gpa)
            .map_err(|e| GdbError(format!("{gva:#x}: {e}")))
    }

    /// `[gva, gva + len)` as guest-physical pieces, one per page.
    fn pieces(&mut self, vcpu: usize, gva: u64, len: u64) -> Result<Vec<(u64, u64)>, GdbError> {
        let mut out = Vec::new();
        let mut at = gva;
        let end = gva
            .checked_add(len)
            .ok_or_else(|| GdbError("the range wraps".into()))?;
        while at < end {
            let n = (0x1000 - (at & 0xfff)).min(end - at);
            out.push((self.translate(vcpu, at)?, n));
            at += n;
        }
        Ok(out)
    }

    /// The slots any live vCPU's policies use.
    fn policy_slots(&self) -> Result<u8, GdbError> {
        let mut used = 0u8;
        for i in self.link.alive() {
            let Reply::Debug(d) = self.ask(i, Request::DebugState)? else {
                return Err(GdbError("unexpected reply".into()));
            };
            for s in 0..4u8 {
                if d.hw[usize::from(s)].is_some() && !d.debugger_holds(s) {
                    used |= 1 << s;
                }
            }
        }
        Ok(used)
    }

    /// Puts `entry` in a free slot, with gdb's error for none.
    fn take_slot(&mut self, entry: Entry) -> TargetResult<bool, Self> {
        let used = self.policy_slots().map_err(TargetError::Fatal)?;
        match self.table.add(entry, used) {
            Ok(_) => Ok(true),
            Err(SlotError::Full) => {
                eprintln!(
                    "wasmvisor: gdb: no debug-register slot left for {:#x}: gdb holds {}, policies {} of the 4",
                    entry.bp.gva,
                    self.table.mask().count_ones(),
                    used.count_ones()
                );
                Err(TargetError::Errno(ENOSPC))
            }
            Err(SlotError::BadLength) => Err(TargetError::Errno(EINVAL)),
        }
    }

    /// The release every resumed vCPU gets.
    fn release_base(&self) -> Release {
        Release {
            slots: self.table.hw(),
            mask: self.table.mask(),
            step: false,
            int3: !self.table.int3.is_empty(),
        }
    }

    /// Whether a queued stop still means something to gdb.
    fn still_wanted(&self, stop: &Stop) -> bool {
        match *stop {
            Stop::Step => false,
            Stop::Breakpoint { addr, .. } => self.table.breaks_at(addr),
            Stop::Watch { addr, .. } => self.table.watch_at(addr).is_some(),
            Stop::Fault => true,
        }
    }

    /// Tells the vCPUs' exit check which pages gdb watches.
    fn publish_page_watches(&self) {
        let watches = self
            .table
            .watched
            .iter()
            .flat_map(|w| {
                w.pieces.iter().map(move |&(gpa, len)| PageWatch {
                    addr: w.addr,
                    gpa,
                    len,
                })
            })
            .collect();
        self.link
            .set_page_watches(watches, self.owned_pages.clone());
    }

    /// Ends the session: every breakpoint out, every page back, every vCPU
    /// running (unless the VM is being killed).
    pub fn detach(&mut self) {
        for b in std::mem::take(&mut self.table.int3) {
            let _ = self.vm.memory.write_obj(b.original, GuestAddress(b.gpa));
        }
        self.table = Table::default();
        self.link.set_int3s(Vec::new());
        self.unprotect_owned();
        self.publish_page_watches();
        self.link.want_hold(false);
        let plan: Vec<(usize, Release)> = self
            .link
            .alive()
            .into_iter()
            .map(|i| (i, Release::default()))
            .collect();
        self.link.release(&plan);
        self.running.clear();
        self.regs.iter_mut().for_each(|r| *r = None);
    }

    /// gdb's `kill`: the VM stops.
    pub fn kill(&mut self) {
        self.killed = true;
        self.vm.control.stop.store(true, Ordering::Release);
        (self.vm.kick)();
        self.detach();
    }
}

/// Pages gdb write-protected for its watchpoints.
impl VmTarget {
    fn unprotect_owned(&mut self) {
        for page in std::mem::take(&mut self.owned_pages) {
            let _ = self.vm.protector.unprotect(GpaRange {
                base: page,
                len: 0x1000,
            });
        }
    }

    /// Protects the pages the page watches span that nobody protects yet,
    /// and lets go of those no watch spans any more.
    fn sync_watched_pages(&mut self) -> Result<(), GdbError> {
        let wanted = self.table.watched_pages();
        let stale: Vec<u64> = self
            .owned_pages
            .iter()
            .copied()
            .filter(|p| !wanted.contains(p))
            .collect();
        for page in stale {
            let _ = self.vm.protector.unprotect(GpaRange {
                base: page,
                len: 0x1000,
            });
            self.owned_pages.retain(|&p| p != page);
        }
        for page in wanted {
            if self.owned_pages.contains(&page) || self.vm.protector.lookup(page).is_some() {
                continue;
            }
            let range = GpaRange {
                base: page,
                len: 0x1000,
            };
            self.vm
                .protector
                .protect(range, Protection::WriteProtect)
                .map_err(|e| GdbError(format!("cannot write-protect {page:#x}: {e}")))?;
            self.owned_pages.push(page);
        }
        self.publish_page_watches();
        Ok(())
    }
}

impl Target for VmTarget {
    type Arch = X86_64System;
    type Error = GdbError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn support_target_description_xml_override(
        &mut self,
    ) -> Option<TargetDescriptionXmlOverrideOps<'_, Self>> {
        Some(self)
    }
}

impl TargetDescriptionXmlOverride for VmTarget {
    fn target_description_xml(
        &self,
        annex: &[u8],
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        if annex != b"target.xml" {
            return Err(TargetError::NonFatal);
        }
        let xml = self.layout.target_xml().as_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(xml.len());
        let n = length.min(buf.len()).min(xml.len() - start);
        buf[..n].copy_from_slice(&xml[start..start + n]);
        Ok(n)
    }
}

impl MultiThreadBase for VmTarget {
    fn read_registers(&mut self, regs: &mut SystemRegs, tid: Tid) -> TargetResult<(), Self> {
        let r = self.vcpu_regs(vcpu_of(tid)).map_err(TargetError::Fatal)?;
        *regs = to_gdb(&r, self.layout);
        Ok(())
    }

    fn write_registers(&mut self, regs: &SystemRegs, tid: Tid) -> TargetResult<(), Self> {
        let vcpu = vcpu_of(tid);
        if regs.layout != self.layout {
            return Err(TargetError::NonFatal);
        }
        let mut r = self.vcpu_regs(vcpu).map_err(TargetError::Fatal)?;
        from_gdb(regs, &mut r);
        match self.ask(vcpu, Request::WriteRegs(Box::new(r))) {
            Ok(Reply::Written(Ok(()))) => {
                self.regs[vcpu] = None;
                Ok(())
            }
            Ok(Reply::Written(Err(e))) | Err(GdbError(e)) => {
                eprintln!("wasmvisor: gdb: vCPU {vcpu}: cannot write the registers: {e}");
                self.regs[vcpu] = None;
                Err(TargetError::NonFatal)
            }
            Ok(_) => Err(TargetError::NonFatal),
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let vcpu = vcpu_of(tid);
        let mut done = 0usize;
        while done < data.len() {
            let at = start.wrapping_add(done as u64);
            let n = ((0x1000 - (at & 0xfff)) as usize).min(data.len() - done);
            let Ok(gpa) = self.translate(vcpu, at) else {
                break;
            };
            if self
                .vm
                .memory
                .read_slice(&mut data[done..done + n], GuestAddress(gpa))
                .is_err()
            {
                break;
            }
            done += n;
        }
        if done == 0 {
            return Err(TargetError::Errno(EFAULT));
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let vcpu = vcpu_of(tid);
        // Translate everything before writing anything.
        let pieces = self
            .pieces(vcpu, start, data.len() as u64)
            .map_err(|_| TargetError::Errno(EFAULT))?;
        let mut at = 0usize;
        for (gpa, n) in pieces {
            let n = n as usize;
            self.vm
                .memory
                .write_slice(&data[at..at + n], GuestAddress(gpa))
                .map_err(|_| TargetError::Errno(EFAULT))?;
            at += n;
        }
        Ok(())
    }

    fn list_active_threads(
        &mut self,
        thread_is_active: &mut dyn FnMut(Tid),
    ) -> Result<(), GdbError> {
        for i in self.link.alive() {
            thread_is_active(tid(i));
        }
        Ok(())
    }

    fn is_thread_alive(&mut self, tid: Tid) -> Result<bool, GdbError> {
        Ok(self.link.alive().contains(&vcpu_of(tid)))
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl ThreadExtraInfo for VmTarget {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, GdbError> {
        let text = format!("vCPU {}", vcpu_of(tid));
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl MultiThreadResume for VmTarget {
    fn resume(&mut self) -> Result<(), GdbError> {
        let alive = self.link.alive();
        let default = if self.scheduler_lock {
            None
        } else {
            Some(Action::Continue)
        };
        let plan: Vec<(usize, Action)> = alive
            .iter()
            .filter_map(|&i| {
                self.actions
                    .get(i)
                    .copied()
                    .flatten()
                    .or(default)
                    .map(|a| (i, a))
            })
            .collect();
        self.running = plan.iter().map(|&(i, _)| i).collect();
        // Stops gdb has not seen and still cares about are reported now,
        // before anything runs (all-stop).
        self.link.prune_stops(|_, s| self.still_wanted(s));
        if self.link.has_stop_for(&self.running) {
            return Ok(());
        }
        self.regs.iter_mut().for_each(|r| *r = None);
        let base = self.release_base();
        let releases: Vec<(usize, Release)> = plan
            .iter()
            .map(|&(i, a)| {
                (
                    i,
                    Release {
                        step: a == Action::Step,
                        ..base
                    },
                )
            })
            .collect();
        self.link.want_hold(false);
        self.link.release(&releases);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), GdbError> {
        self.actions.iter_mut().for_each(|a| *a = None);
        self.scheduler_lock = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
    ) -> Result<(), GdbError> {
        self.drop_signal(signal);
        if let Some(a) = self.actions.get_mut(vcpu_of(tid)) {
            *a = Some(Action::Continue);
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for VmTarget {
    fn set_resume_action_step(&mut self, tid: Tid, signal: Option<Signal>) -> Result<(), GdbError> {
        self.drop_signal(signal);
        if let Some(a) = self.actions.get_mut(vcpu_of(tid)) {
            *a = Some(Action::Step);
        }
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for VmTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), GdbError> {
        self.scheduler_lock = true;
        Ok(())
    }
}

impl Breakpoints for VmTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

fn execute_at(addr: u64) -> HwBreakpoint {
    HwBreakpoint {
        kind: HwBreakpointKind::Execute,
        gva: addr,
        len: 1,
    }
}

impl HwBreakpointExt for VmTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.take_slot(Entry {
            bp: execute_at(addr),
            origin: Origin::Hardware,
            len: 1,
        })
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.table.remove(execute_at(addr), Origin::Hardware))
    }
}

impl SwBreakpoint for VmTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.caps().int3 {
            let gpa = self
                .translate(self.current, addr)
                .map_err(|_| TargetError::Errno(EFAULT))?;
            let original: u8 = self
                .vm
                .memory
                .read_obj(GuestAddress(gpa))
                .map_err(|_| TargetError::Errno(EFAULT))?;
            self.vm
                .memory
                .write_obj(0xccu8, GuestAddress(gpa))
                .map_err(|_| TargetError::Errno(EFAULT))?;
            self.table.int3.push(Int3 {
                addr,
                gpa,
                original,
            });
            self.link
                .set_int3s(self.table.int3.iter().map(|b| b.addr).collect());
            return Ok(true);
        }
        self.say_once(
            "sw-fallback",
            "this KVM backend does not trap int3 for the host: software breakpoints use the free debug-register slots (4 in all, shared with hbreak, watchpoints and policies)".to_string(),
        );
        self.take_slot(Entry {
            bp: execute_at(addr),
            origin: Origin::Software,
            len: 1,
        })
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if let Some(at) = self.table.int3.iter().position(|b| b.addr == addr) {
            let b = self.table.int3.remove(at);
            self.link
                .set_int3s(self.table.int3.iter().map(|b| b.addr).collect());
            self.vm
                .memory
                .write_obj(b.original, GuestAddress(b.gpa))
                .map_err(|_| TargetError::Errno(EFAULT))?;
            return Ok(true);
        }
        Ok(self.table.remove(execute_at(addr), Origin::Software))
    }
}

impl HwWatchpoint for VmTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let caps = self.caps();
        if kind == WatchKind::Write && !caps.data_breakpoints {
            self.say_once(
                "watch-pages",
                "this KVM backend ignores data breakpoints in the guest code it emulates: write watchpoints write-protect their pages instead (no slot used)".to_string(),
            );
            let pieces = self.pieces(self.current, addr, len).map_err(|e| {
                eprintln!("wasmvisor: gdb: cannot watch {addr:#x}: {e}");
                TargetError::Errno(EFAULT)
            })?;
            self.table.watched.push(Watched { addr, len, pieces });
            if let Err(e) = self.sync_watched_pages() {
                eprintln!("wasmvisor: gdb: {e}");
                self.table.watched.pop();
                let _ = self.sync_watched_pages();
                return Err(TargetError::Errno(EFAULT));
            }
            return Ok(true);
        }
        if !caps.data_breakpoints {
            self.say_once(
                "watch-read",
                "read and access watchpoints use the debug registers, which this KVM backend does not check in the guest code it emulates (kernel mode): they fire in user-mode code only".to_string(),
            );
        }
        let dr_len = u8::try_from(len).unwrap_or(0);
        self.take_slot(Entry {
            bp: HwBreakpoint {
                kind: dr_kind(kind),
                gva: addr,
                len: dr_len,
            },
            origin: Origin::Watch(kind),
            len,
        })
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if let Some(at) = self
            .table
            .watched
            .iter()
            .position(|w| w.addr == addr && w.len == len)
        {
            self.table.watched.remove(at);
            self.sync_watched_pages().map_err(TargetError::Fatal)?;
            return Ok(true);
        }
        let bp = HwBreakpoint {
            kind: dr_kind(kind),
            gva: addr,
            len: u8::try_from(len).unwrap_or(0),
        };
        Ok(self.table.remove(bp, Origin::Watch(kind)))
    }
}

impl gdbstub::target::ext::monitor_cmd::MonitorCmd for VmTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), GdbError> {
        let text = String::from_utf8_lossy(cmd);
        let reply = super::monitor::run(self, &text);
        for line in reply.lines() {
            gdbstub::outputln!(out, "{line}");
        }
        Ok(())
    }
}

/// What the `monitor` commands reach.
impl VmTarget {
    /// Reads guest-physical memory.
    pub fn read_phys(&self, gpa: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        self.vm
            .memory
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|e| format!("cannot read {len} bytes at guest-physical {gpa:#x}: {e}"))?;
        Ok(buf)
    }

    /// Writes guest-physical memory.
    pub fn write_phys(&self, gpa: u64, bytes: &[u8]) -> Result<(), String> {
        self.vm
            .memory
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|e| {
                format!(
                    "cannot write {} bytes at guest-physical {gpa:#x}: {e}",
                    bytes.len()
                )
            })
    }

    /// Each live vCPU's slots: who holds them.
    pub fn slot_report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for i in self.link.alive() {
            let Ok(Reply::Debug(d)) = self.ask(i, Request::DebugState) else {
                lines.push(format!("vCPU {i}: not held"));
                continue;
            };
            let slots: Vec<String> = (0..4u8)
                .map(|s| {
                    let who = match (d.hw[usize::from(s)], d.debugger_holds(s)) {
                        (_, true) => "gdb",
                        (Some(_), false) => "policy",
                        (None, false) => "free",
                    };
                    format!("DR{s} {who}")
                })
                .collect();
            lines.push(format!("vCPU {i}: {}", slots.join(", ")));
        }
        // gdb removes its breakpoints at every stop and inserts them again
        // when it resumes (`breakpoint always-inserted off`): what it has
        // inserted now, which the vCPUs get when they run.
        let pending: Vec<String> = (0..4)
            .filter_map(|s| {
                self.table.slots[s].map(|e| format!("DR{s} {:#x} ({:?})", e.bp.gva, e.origin))
            })
            .collect();
        lines.push(format!(
            "inserted by gdb now: {}",
            if pending.is_empty() {
                "none".to_string()
            } else {
                pending.join(", ")
            }
        ));
        lines
    }

    /// The kernel profile and the slide of a Linux guest.
    pub fn kernel(&mut self) -> Option<(Arc<KernelProfile>, u64)> {
        let kernel = self.vm.kernel.clone()?;
        let current = self.current;
        let lstar = match self.ask(current, Request::ReadMsr(0xc000_0082)) {
            Ok(Reply::Msr(v)) => v,
            _ => None,
        };
        let slide = kernel.slide(|| lstar);
        Some((kernel, slide))
    }
}

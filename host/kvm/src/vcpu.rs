//! One vCPU: setup, `KVM_RUN`, exit snapshots and completions.
//!
//! `VcpuExit<'_>` borrows `kvm_run`, so [`Vcpu::run`] copies what the rest
//! of the pipeline needs into an owned [`ExitEvent`] and remembers what
//! the exit still owes the guest ([`Pending`]). After the policy or the
//! default handler answered, [`Vcpu::complete`] writes that answer back
//! into `kvm_run`, and the next `KVM_RUN` delivers it. Registers travel
//! in `kvm_run` through `KVM_CAP_SYNC_REGS`, because a `KVM_GET_REGS`
//! ioctl costs as much as a whole exit on a software KVM backend.

use std::fmt;

use kvm_bindings::{
    kvm_guest_debug, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use wasmvisor_exit::{
    Completion, DebugCause, DebugExit, DebugState, Direction, Exception, ExitEvent, ExitKind,
    IoExit, MmioExit, MsrExit, MsrReason, Reg, Segment, SegmentReg, ShutdownReason, VcpuAccess,
    VcpuAccessError,
};

use crate::boot::BootState;
use crate::cpuid::{to_kvm, CpuidEntry};
use crate::decode;
use crate::KvmError;

/// What the current exit still owes the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    /// Port I/O: `count` elements of `size` bytes at `data_offset` in
    /// `kvm_run`; `element` is the one being handled.
    Io {
        port: u16,
        direction: Direction,
        size: u8,
        count: u32,
        data_offset: u64,
        element: u32,
    },
    MmioRead {
        len: u8,
    },
    Msr,
}

/// A guest failure that ends this vCPU: triple fault, internal error or
/// entry failure. Displays as one line naming the vCPU, RIP and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalExit {
    pub vcpu: u32,
    pub rip: u64,
    pub reason: ShutdownReason,
    pub detail: String,
}

impl fmt::Display for FatalExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            ShutdownReason::TripleFault => "shutdown (triple fault)",
            ShutdownReason::InternalError => "KVM internal error",
            ShutdownReason::EntryFailure => "VM entry failed",
        };
        write!(f, "vcpu {} at rip {:#x}: {what}", self.vcpu, self.rip)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// The result of one `KVM_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// An exit to answer; call [`Vcpu::complete`] afterwards.
    Exit(ExitEvent),
    /// The guest cannot go on.
    Fatal(FatalExit),
    /// `KVM_RUN` was interrupted (a kick, or a signal); nothing is owed.
    Interrupted,
}

/// A vCPU and its exit bookkeeping.
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
    seq: u64,
    sync_regs: bool,
    pending: Pending,
    /// Segment/control registers, fetched at most once per exit.
    sregs: Option<kvm_sregs>,
    sregs_dirty: bool,
    /// General registers when KVM lacks sync regs.
    regs: Option<kvm_regs>,
    regs_dirty: bool,
    /// Breakpoints and single-step, as last given to KVM.
    debug: DebugState,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, index: u32, sync_regs: bool) -> Vcpu {
        let mut v = Vcpu {
            fd,
            index,
            seq: 0,
            sync_regs,
            pending: Pending::None,
            sregs: None,
            sregs_dirty: false,
            regs: None,
            regs_dirty: false,
            debug: DebugState::default(),
        };
        if sync_regs {
            v.fd.set_sync_valid_reg(SyncReg::Register);
        }
        v
    }

    /// Index of this vCPU.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Exits taken so far.
    pub fn exits(&self) -> u64 {
        self.seq
    }

    /// Sets the CPUID table. Must happen before the first run: KVM refuses
    /// changes afterwards.
    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), KvmError> {
        self.fd
            .set_cpuid2(&to_kvm(entries)?)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))
    }

    /// Puts the vCPU in the boot state's mode at its entry point.
    pub fn boot(&mut self, boot: &BootState) -> Result<(), KvmError> {
        let sregs = self
            .fd
            .get_sregs()
            .map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
        self.fd
            .set_sregs(&boot.sregs(sregs))
            .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&boot.regs(self.index))
            .map_err(KvmError::ioctl("KVM_SET_REGS"))
    }

    /// Wires the legacy PIC to LINT0 (ExtINT) and NMI to LINT1 of this
    /// vCPU's local APIC, as a PC does, so PIT interrupts reach the boot
    /// CPU before the kernel programs its IOAPIC.
    pub fn set_lapic_lints(&mut self) -> Result<(), KvmError> {
        const LVT_LINT0: usize = 0x350;
        const LVT_LINT1: usize = 0x360;
        const EXTINT: u32 = 0b111;
        const NMI: u32 = 0b100;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
        for (offset, mode) in [(LVT_LINT0, EXTINT), (LVT_LINT1, NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                lapic.regs[offset + i] = b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(KvmError::ioctl("KVM_SET_LAPIC"))
    }

    /// Raw pointer to this vCPU's `kvm_run`, for the kick signal handler.
    pub(crate) fn kvm_run_ptr(&mut self) -> *mut kvm_bindings::kvm_run {
        self.fd.get_kvm_run()
    }

    /// Runs the guest until the next exit.
    pub fn run(&mut self) -> Result<RunOutcome, KvmError> {
        self.flush()?;
        self.pending = Pending::None;
        self.sregs = None;
        self.regs = None;
        let raw = match self.fd.run() {
            Ok(exit) => RawExit::from(exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Ok(RunOutcome::Interrupted);
            }
            Err(e) => {
                return Err(KvmError::Ioctl {
                    op: "KVM_RUN",
                    source: e,
                })
            }
        };
        let rip = self.rip()?;
        let kind = match raw {
            RawExit::Io(port, direction) => self.io_exit(port, direction),
            RawExit::Mmio {
                gpa,
                len,
                write,
                data,
            } => {
                let direction = if write {
                    Direction::Write
                } else {
                    self.pending = Pending::MmioRead { len };
                    Direction::Read
                };
                ExitKind::Mmio(MmioExit {
                    gpa,
                    size: len,
                    direction,
                    data,
                })
            }
            RawExit::Msr {
                index,
                direction,
                value,
                reason,
            } => {
                self.pending = Pending::Msr;
                ExitKind::Msr(MsrExit {
                    index,
                    direction,
                    value,
                    reason,
                })
            }
            RawExit::Debug(mut d) => {
                // The step over a disarmed execute breakpoint: put it back,
                // and run on unless a policy asked to step as well.
                if let Some((slot, bp)) = self.debug.rearm {
                    let mut state = self.debug;
                    state.rearm = None;
                    state.hw[usize::from(slot)] = Some(bp);
                    let asked = state.step_always || state.step_once;
                    self.set_debug_state(state)
                        .map_err(|e| KvmError::Debug(e.to_string()))?;
                    if !asked {
                        return self.run();
                    }
                    d.cause = DebugCause::SingleStep;
                    d.slot = None;
                }
                // Some backends leave DR6 empty: name the slot from the
                // execute breakpoint at this RIP instead.
                if d.slot.is_none() {
                    if let Some(slot) = self.debug.execute_slot_at(rip) {
                        d.slot = Some(slot);
                        d.cause = DebugCause::HwBreakpoint;
                    }
                }
                ExitKind::Debug(d)
            }
            RawExit::Hlt => ExitKind::Hlt,
            RawExit::Interrupted => return Ok(RunOutcome::Interrupted),
            RawExit::Fatal(reason, detail) => {
                let detail = if reason == ShutdownReason::InternalError {
                    self.internal_error_detail()
                } else {
                    detail
                };
                return Ok(RunOutcome::Fatal(FatalExit {
                    vcpu: self.index,
                    rip,
                    reason,
                    detail,
                }));
            }
        };
        let event = ExitEvent {
            vcpu: self.index,
            seq: self.seq,
            rip,
            kind,
        };
        self.seq += 1;
        Ok(RunOutcome::Exit(event))
    }

    /// Builds the event for the current element of a port I/O exit.
    fn io_exit(&mut self, port: u16, direction: Direction) -> ExitKind {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_IO (checked by kvm-ioctls
        // before it returned VcpuExit::IoIn/IoOut), so `io` is the live
        // member of the union.
        let io = unsafe { run.__bindgen_anon_1.io };
        self.pending = Pending::Io {
            port,
            direction,
            size: io.size,
            count: io.count,
            data_offset: io.data_offset,
            element: 0,
        };
        self.io_element_kind()
    }

    fn io_element_kind(&mut self) -> ExitKind {
        let Pending::Io {
            port,
            direction,
            size,
            data_offset,
            element,
            ..
        } = self.pending
        else {
            unreachable!("io_element_kind is only called with a pending I/O exit");
        };
        let data = if direction == Direction::Write {
            let mut buf = [0u8; 4];
            let n = usize::from(size).min(4);
            let offset = data_offset as usize + element as usize * usize::from(size);
            self.kvm_run_bytes(offset, &mut buf[..n]);
            u32::from_le_bytes(buf)
        } else {
            0
        };
        ExitKind::Io(IoExit {
            port,
            size,
            direction,
            data,
        })
    }

    /// Copies bytes out of the `kvm_run` page.
    fn kvm_run_bytes(&mut self, offset: usize, out: &mut [u8]) {
        let base = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run as *const u8;
        // SAFETY: `offset` comes from the kernel's `io.data_offset` plus an
        // element index bounded by `io.count`; the kernel guarantees the
        // whole data area lies inside the mmap'd `kvm_run` region, which
        // lives as long as the vCPU fd.
        unsafe { std::ptr::copy_nonoverlapping(base.add(offset), out.as_mut_ptr(), out.len()) }
    }

    /// Writes bytes into the `kvm_run` page.
    fn kvm_run_write(&mut self, offset: usize, data: &[u8]) {
        let base = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run as *mut u8;
        // SAFETY: as in `kvm_run_bytes`: the kernel placed the I/O data
        // area inside the mapped `kvm_run` region; we hold `&mut self`, so
        // nothing else reads it while we write.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), data.len()) }
    }

    /// Writes the answer to the current exit (or I/O element) into
    /// `kvm_run`. Returns the event for the next element of a string I/O
    /// exit, if one remains; it must be answered the same way.
    pub fn complete(&mut self, c: &Completion) -> Option<ExitEvent> {
        match self.pending.clone() {
            Pending::None => None,
            Pending::Io {
                direction,
                size,
                count,
                data_offset,
                element,
                ..
            } => {
                if direction == Direction::Read {
                    let value = c.read.unwrap_or(u64::MAX).to_le_bytes();
                    let n = usize::from(size).min(8);
                    let offset = data_offset as usize + element as usize * usize::from(size);
                    self.kvm_run_write(offset, &value[..n]);
                }
                if element + 1 >= count {
                    return None;
                }
                if let Pending::Io { element, .. } = &mut self.pending {
                    *element += 1;
                }
                let kind = self.io_element_kind();
                let rip = self.rip().unwrap_or(0);
                let event = ExitEvent {
                    vcpu: self.index,
                    seq: self.seq,
                    rip,
                    kind,
                };
                self.seq += 1;
                Some(event)
            }
            Pending::MmioRead { len } => {
                let value = c.read.unwrap_or(u64::MAX).to_le_bytes();
                let run = self.fd.get_kvm_run();
                let n = usize::from(len).min(8);
                // SAFETY: the pending exit is KVM_EXIT_MMIO, so `mmio` is
                // the live union member; `n` is at most its 8-byte buffer.
                unsafe { run.__bindgen_anon_1.mmio.data[..n].copy_from_slice(&value[..n]) };
                None
            }
            Pending::Msr => {
                let run = self.fd.get_kvm_run();
                // The pending exit is KVM_EXIT_X86_RDMSR/WRMSR, so `msr` is
                // the live union member (writing a union field is safe).
                run.__bindgen_anon_1.msr.error = u8::from(c.msr_fault);
                if let Some(v) = c.read {
                    run.__bindgen_anon_1.msr.data = v;
                }
                None
            }
        }
    }

    /// Decodes `kvm_run.internal` into a readable detail, with the
    /// instruction bytes when the emulator reported them.
    fn internal_error_detail(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the live union member.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        decode::internal_error_detail(internal.suberror, internal.ndata, &internal.data)
    }

    fn rip(&mut self) -> Result<u64, KvmError> {
        if self.sync_regs {
            Ok(self.fd.sync_regs_mut().regs.rip)
        } else {
            Ok(self.general_regs()?.rip)
        }
    }

    fn general_regs(&mut self) -> Result<&mut kvm_regs, KvmError> {
        if self.regs.is_none() {
            self.regs = Some(
                self.fd
                    .get_regs()
                    .map_err(KvmError::ioctl("KVM_GET_REGS"))?,
            );
        }
        Ok(self.regs.as_mut().expect("filled above"))
    }

    fn system_regs(&mut self) -> Result<&mut kvm_sregs, VcpuAccessError> {
        if self.sregs.is_none() {
            self.sregs = Some(self.fd.get_sregs().map_err(access_err("KVM_GET_SREGS"))?);
        }
        Ok(self.sregs.as_mut().expect("filled above"))
    }

    /// Pushes register changes made during the last exit into KVM.
    fn flush(&mut self) -> Result<(), KvmError> {
        if self.sregs_dirty {
            if let Some(s) = &self.sregs {
                self.fd
                    .set_sregs(s)
                    .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
            }
            self.sregs_dirty = false;
        }
        if self.regs_dirty {
            if let Some(r) = &self.regs {
                self.fd
                    .set_regs(r)
                    .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
            }
            self.regs_dirty = false;
        }
        Ok(())
    }

    fn gpr_slot(regs: &mut kvm_regs, reg: Reg) -> Option<&mut u64> {
        Some(match reg {
            Reg::Rax => &mut regs.rax,
            Reg::Rbx => &mut regs.rbx,
            Reg::Rcx => &mut regs.rcx,
            Reg::Rdx => &mut regs.rdx,
            Reg::Rsi => &mut regs.rsi,
            Reg::Rdi => &mut regs.rdi,
            Reg::Rsp => &mut regs.rsp,
            Reg::Rbp => &mut regs.rbp,
            Reg::R8 => &mut regs.r8,
            Reg::R9 => &mut regs.r9,
            Reg::R10 => &mut regs.r10,
            Reg::R11 => &mut regs.r11,
            Reg::R12 => &mut regs.r12,
            Reg::R13 => &mut regs.r13,
            Reg::R14 => &mut regs.r14,
            Reg::R15 => &mut regs.r15,
            Reg::Rip => &mut regs.rip,
            Reg::Rflags => &mut regs.rflags,
            Reg::Cr0 | Reg::Cr2 | Reg::Cr3 | Reg::Cr4 | Reg::Cr8 | Reg::Efer => return None,
        })
    }

    fn sreg_slot(sregs: &mut kvm_sregs, reg: Reg) -> &mut u64 {
        match reg {
            Reg::Cr0 => &mut sregs.cr0,
            Reg::Cr2 => &mut sregs.cr2,
            Reg::Cr3 => &mut sregs.cr3,
            Reg::Cr4 => &mut sregs.cr4,
            Reg::Cr8 => &mut sregs.cr8,
            _ => &mut sregs.efer,
        }
    }

    fn with_gpr<T>(
        &mut self,
        reg: Reg,
        f: impl FnOnce(&mut u64) -> T,
    ) -> Result<Option<T>, VcpuAccessError> {
        if self.sync_regs {
            let regs = &mut self.fd.sync_regs_mut().regs;
            Ok(Self::gpr_slot(regs, reg).map(f))
        } else {
            let regs = self.general_regs().map_err(|e| VcpuAccessError {
                op: "KVM_GET_REGS",
                reason: e.to_string(),
            })?;
            Ok(Self::gpr_slot(regs, reg).map(f))
        }
    }
}

fn access_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuAccessError {
    move |e| VcpuAccessError {
        op,
        reason: e.to_string(),
    }
}

impl VcpuAccess for Vcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn get_reg(&mut self, reg: Reg) -> Result<u64, VcpuAccessError> {
        if let Some(v) = self.with_gpr(reg, |slot| *slot)? {
            return Ok(v);
        }
        Ok(*Self::sreg_slot(self.system_regs()?, reg))
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), VcpuAccessError> {
        if self.with_gpr(reg, |slot| *slot = value)?.is_some() {
            if self.sync_regs {
                self.fd.set_sync_dirty_reg(SyncReg::Register);
            } else {
                self.regs_dirty = true;
            }
            return Ok(());
        }
        *Self::sreg_slot(self.system_regs()?, reg) = value;
        self.sregs_dirty = true;
        Ok(())
    }

    fn inject_exception(&mut self, e: Exception) -> Result<(), VcpuAccessError> {
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(access_err("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = e.vector;
        events.exception.has_error_code = u8::from(e.error_code.is_some());
        events.exception.error_code = e.error_code.unwrap_or(0);
        self.fd
            .set_vcpu_events(&events)
            .map_err(access_err("KVM_SET_VCPU_EVENTS"))
    }

    fn host_rdmsr(&mut self, index: u32) -> Result<Option<u64>, VcpuAccessError> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| VcpuAccessError {
            op: "KVM_GET_MSRS",
            reason: format!("{e:?}"),
        })?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(access_err("KVM_GET_MSRS"))?;
        Ok((read == 1).then(|| msrs.as_slice()[0].data))
    }

    fn get_segment(&mut self, s: SegmentReg) -> Result<Segment, VcpuAccessError> {
        Ok(segment_from_kvm(segment_slot(self.system_regs()?, s)))
    }

    fn set_segment(&mut self, s: SegmentReg, v: Segment) -> Result<(), VcpuAccessError> {
        *segment_slot(self.system_regs()?, s) = segment_to_kvm(&v);
        self.sregs_dirty = true;
        Ok(())
    }

    fn debug_state(&self) -> DebugState {
        self.debug
    }

    fn set_debug_state(&mut self, d: DebugState) -> Result<(), VcpuAccessError> {
        let mut control = 0;
        if d.enabled() {
            control |= KVM_GUESTDBG_ENABLE;
        }
        if d.single_step() {
            control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if d.hw.iter().any(Option::is_some) {
            control |= KVM_GUESTDBG_USE_HW_BP;
        }
        let mut dbg = kvm_guest_debug {
            control,
            ..Default::default()
        };
        for (i, bp) in d.hw.iter().enumerate() {
            dbg.arch.debugreg[i] = bp.map_or(0, |b| b.gva);
        }
        dbg.arch.debugreg[7] = d.dr7();
        self.fd
            .set_guest_debug(&dbg)
            .map_err(access_err("KVM_SET_GUEST_DEBUG"))?;
        self.debug = d;
        Ok(())
    }

    fn host_wrmsr(&mut self, index: u32, value: u64) -> Result<bool, VcpuAccessError> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        }])
        .map_err(|e| VcpuAccessError {
            op: "KVM_SET_MSRS",
            reason: format!("{e:?}"),
        })?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(access_err("KVM_SET_MSRS"))?;
        Ok(written == 1)
    }
}

/// An exit copied out of `VcpuExit<'_>` so the borrow on the fd ends.
enum RawExit {
    Io(u16, Direction),
    Mmio {
        gpa: u64,
        len: u8,
        write: bool,
        data: u64,
    },
    Msr {
        index: u32,
        direction: Direction,
        value: u64,
        reason: MsrReason,
    },
    Debug(DebugExit),
    Hlt,
    Interrupted,
    Fatal(ShutdownReason, String),
}

impl From<VcpuExit<'_>> for RawExit {
    fn from(exit: VcpuExit<'_>) -> Self {
        match exit {
            VcpuExit::IoIn(port, _) => RawExit::Io(port, Direction::Read),
            VcpuExit::IoOut(port, _) => RawExit::Io(port, Direction::Write),
            VcpuExit::MmioRead(gpa, data) => RawExit::Mmio {
                gpa,
                len: data.len() as u8,
                write: false,
                data: 0,
            },
            VcpuExit::MmioWrite(gpa, data) => {
                let (len, data) = decode::mmio_write(data);
                RawExit::Mmio {
                    gpa,
                    len,
                    write: true,
                    data,
                }
            }
            VcpuExit::X86Rdmsr(m) => RawExit::Msr {
                index: m.index,
                direction: Direction::Read,
                value: 0,
                reason: decode::msr_reason(m.reason),
            },
            VcpuExit::X86Wrmsr(m) => RawExit::Msr {
                index: m.index,
                direction: Direction::Write,
                value: m.data,
                reason: decode::msr_reason(m.reason),
            },
            VcpuExit::Debug(d) => RawExit::Debug(decode::debug_exit(d.exception, d.dr6, d.dr7)),
            VcpuExit::Hlt => RawExit::Hlt,
            VcpuExit::Intr | VcpuExit::IrqWindowOpen => RawExit::Interrupted,
            VcpuExit::Shutdown => RawExit::Fatal(ShutdownReason::TripleFault, String::new()),
            VcpuExit::FailEntry(reason, cpu) => RawExit::Fatal(
                ShutdownReason::EntryFailure,
                format!("hardware entry failure reason {reason:#x} on host cpu {cpu}"),
            ),
            VcpuExit::InternalError => RawExit::Fatal(ShutdownReason::InternalError, String::new()),
            VcpuExit::MemoryFault { gpa, size, .. } => RawExit::Fatal(
                ShutdownReason::InternalError,
                format!("memory fault at gpa {gpa:#x} size {size:#x}"),
            ),
            other => RawExit::Fatal(
                ShutdownReason::InternalError,
                format!("unexpected exit {}", exit_name(&other)),
            ),
        }
    }
}

fn exit_name(exit: &VcpuExit<'_>) -> String {
    let dbg = format!("{exit:?}");
    dbg.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

fn segment_slot(s: &mut kvm_sregs, r: SegmentReg) -> &mut kvm_segment {
    match r {
        SegmentReg::Cs => &mut s.cs,
        SegmentReg::Ds => &mut s.ds,
        SegmentReg::Es => &mut s.es,
        SegmentReg::Fs => &mut s.fs,
        SegmentReg::Gs => &mut s.gs,
        SegmentReg::Ss => &mut s.ss,
        SegmentReg::Tr => &mut s.tr,
        SegmentReg::Ldtr => &mut s.ldt,
    }
}

/// KVM's unpacked segment as the WIT's packed attribute word.
fn segment_from_kvm(k: &kvm_segment) -> Segment {
    let attributes = u16::from(k.type_ & 0xf)
        | u16::from(k.s & 1) << 4
        | u16::from(k.dpl & 3) << 5
        | u16::from(k.present & 1) << 7
        | u16::from(k.avl & 1) << 12
        | u16::from(k.l & 1) << 13
        | u16::from(k.db & 1) << 14
        | u16::from(k.g & 1) << 15;
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attributes,
        unusable: k.unusable != 0,
    }
}

fn segment_to_kvm(s: &Segment) -> kvm_segment {
    let bit = |n: u16| ((s.attributes >> n) & 1) as u8;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (s.attributes & 0xf) as u8,
        s: bit(4),
        dpl: ((s.attributes >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(12),
        l: bit(13),
        db: bit(14),
        g: bit(15),
        unusable: u8::from(s.unusable),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_through_the_packed_form() {
        let k = kvm_segment {
            base: 0x1000,
            limit: 0xffff_ffff,
            selector: 0x18,
            type_: 0xb,
            present: 1,
            dpl: 3,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 1,
            unusable: 0,
            padding: 0,
        };
        let s = segment_from_kvm(&k);
        assert_eq!(
            s.attributes,
            0xb | 1 << 4 | 3 << 5 | 1 << 7 | 1 << 12 | 1 << 13 | 1 << 15
        );
        assert_eq!(segment_to_kvm(&s), k);
    }
}

//! Applies validated actions to a vCPU and guest memory.

use crate::GuestRam;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::event::size_mask;
use crate::{
    Action, DebugState, Direction, Exception, ExitEvent, ExitKind, GpaRange, HwBreakpointKind,
    MemAccess, MemoryProtector, ProtectError, Reg, Segment, SegmentReg, StopRequest, PAGE_SIZE,
};

/// Guest memory and its protections, as apply sees them.
#[derive(Clone, Copy)]
pub struct GuestEnv<'a> {
    pub mem: &'a GuestRam,
    pub protector: &'a dyn MemoryProtector,
}

/// A failure of the vCPU backend (an ioctl), not of the policy.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{op} failed: {reason}")]
pub struct VcpuAccessError {
    pub op: &'static str,
    pub reason: String,
}

/// What apply needs from a vCPU. The KVM backend implements it over
/// `kvm_run` sync registers and ioctls; tests implement it with a fake.
pub trait VcpuAccess {
    /// Index of this vCPU.
    fn index(&self) -> u32;
    /// Reads a register (general registers are cheap, control registers
    /// may cost an ioctl).
    fn get_reg(&mut self, reg: Reg) -> Result<u64, VcpuAccessError>;
    /// Writes a register; it takes effect when the vCPU next runs.
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), VcpuAccessError>;
    /// Queues an exception for delivery when the vCPU next runs.
    fn inject_exception(&mut self, exception: Exception) -> Result<(), VcpuAccessError>;
    /// Reads an MSR through the hypervisor's own emulation (bypassing the
    /// MSR filter); `None` if the hypervisor does not know the MSR.
    fn host_rdmsr(&mut self, index: u32) -> Result<Option<u64>, VcpuAccessError>;
    /// Writes an MSR through the hypervisor; `false` if it refused.
    fn host_wrmsr(&mut self, index: u32, value: u64) -> Result<bool, VcpuAccessError>;

    /// Reads a segment register.
    fn get_segment(&mut self, _s: SegmentReg) -> Result<Segment, VcpuAccessError> {
        Err(unsupported("get-segment"))
    }
    /// Writes a segment register; it takes effect when the vCPU next runs.
    fn set_segment(&mut self, _s: SegmentReg, _v: Segment) -> Result<(), VcpuAccessError> {
        Err(unsupported("set-segment"))
    }
    /// The vCPU's debug state.
    fn debug_state(&self) -> DebugState {
        DebugState::default()
    }
    /// Replaces the vCPU's debug state (breakpoints, single-step).
    fn set_debug_state(&mut self, _d: DebugState) -> Result<(), VcpuAccessError> {
        Err(unsupported("guest debug"))
    }
}

/// A boxed vCPU is lent to a policy's store as a pointer: the move in and
/// out of the store per call is 8 bytes, not the whole vCPU.
impl<T: VcpuAccess + ?Sized> VcpuAccess for Box<T> {
    fn index(&self) -> u32 {
        (**self).index()
    }
    fn get_reg(&mut self, reg: Reg) -> Result<u64, VcpuAccessError> {
        (**self).get_reg(reg)
    }
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), VcpuAccessError> {
        (**self).set_reg(reg, value)
    }
    fn inject_exception(&mut self, exception: Exception) -> Result<(), VcpuAccessError> {
        (**self).inject_exception(exception)
    }
    fn host_rdmsr(&mut self, index: u32) -> Result<Option<u64>, VcpuAccessError> {
        (**self).host_rdmsr(index)
    }
    fn host_wrmsr(&mut self, index: u32, value: u64) -> Result<bool, VcpuAccessError> {
        (**self).host_wrmsr(index, value)
    }
    fn get_segment(&mut self, s: SegmentReg) -> Result<Segment, VcpuAccessError> {
        (**self).get_segment(s)
    }
    fn set_segment(&mut self, s: SegmentReg, v: Segment) -> Result<(), VcpuAccessError> {
        (**self).set_segment(s, v)
    }
    fn debug_state(&self) -> DebugState {
        (**self).debug_state()
    }
    fn set_debug_state(&mut self, d: DebugState) -> Result<(), VcpuAccessError> {
        (**self).set_debug_state(d)
    }
}

fn unsupported(op: &'static str) -> VcpuAccessError {
    VcpuAccessError {
        op,
        reason: "not supported by this vCPU backend".into(),
    }
}

/// Continues from a debug exit: a one-shot step ends, and an execute
/// breakpoint is stepped over (disarmed for one instruction, then re-armed
/// by the vCPU backend).
fn continue_debug(
    event: &ExitEvent,
    vcpu: &mut impl VcpuAccess,
    remove: bool,
) -> Result<(), ApplyError> {
    let ExitKind::Debug(d) = event.kind else {
        return Ok(());
    };
    let mut state = vcpu.debug_state();
    let mut changed = std::mem::take(&mut state.step_once);
    if let Some(slot) = d.slot {
        if remove {
            state.hw[usize::from(slot & 3)] = None;
            changed = true;
        } else if let Some(bp) = state.hw[usize::from(slot & 3)] {
            if bp.kind == HwBreakpointKind::Execute {
                state.hw[usize::from(slot & 3)] = None;
                state.rearm = Some((slot & 3, bp));
                changed = true;
            }
        }
    }
    if changed {
        vcpu.set_debug_state(state)?;
    }
    Ok(())
}

/// Data owed to the guest for the exit, written into `kvm_run` by the
/// backend before the next run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Completion {
    /// The value the guest reads (IN, MMIO read, RDMSR).
    pub read: Option<u64>,
    /// The MSR access faults with #GP instead of completing.
    pub msr_fault: bool,
}

/// What the vCPU does after the exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Run the guest again.
    Continue,
    /// This vCPU is halted for good (HLT with interrupts off).
    Halt,
    /// Stop the whole VM.
    Stop(StopRequest),
}

/// Applying a validated answer failed in the backend.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApplyError {
    #[error(transparent)]
    Vcpu(#[from] VcpuAccessError),
    #[error("guest memory access at {gpa:#x} failed: {reason}")]
    Memory { gpa: u64, reason: String },
    #[error(transparent)]
    Protect(#[from] ProtectError),
}

/// Performs a protected-page (or RAM-backed MMIO) access against backing
/// RAM: the write lands, or the read is answered from RAM.
pub fn perform_access(
    event: &ExitEvent,
    env: &GuestEnv<'_>,
    completion: &mut Completion,
) -> Result<(), ApplyError> {
    let (gpa, size, direction, data) = match event.kind {
        ExitKind::MemViolation(v) => (
            v.gpa,
            v.size,
            if v.access == MemAccess::Write {
                Direction::Write
            } else {
                Direction::Read
            },
            v.data,
        ),
        ExitKind::Mmio(m) => (m.gpa, m.size, m.direction, m.data),
        _ => return Ok(()),
    };
    let n = usize::from(size).min(8);
    let err = |e: vm_memory::GuestMemoryError| ApplyError::Memory {
        gpa,
        reason: e.to_string(),
    };
    match direction {
        Direction::Write => env
            .mem
            .write_slice(&data.to_le_bytes()[..n], GuestAddress(gpa))
            .map_err(err)?,
        Direction::Read => {
            let mut buf = [0u8; 8];
            env.mem
                .read_slice(&mut buf[..n], GuestAddress(gpa))
                .map_err(err)?;
            completion.read = Some(u64::from_le_bytes(buf) & size_mask(size));
        }
    }
    Ok(())
}

/// Applies `actions` (already checked by [`crate::validate`]) to finish
/// `event`.
pub fn apply(
    event: &ExitEvent,
    actions: &[Action],
    vcpu: &mut impl VcpuAccess,
    env: &GuestEnv<'_>,
    completion: &mut Completion,
) -> Result<Flow, ApplyError> {
    // A handled HLT resumes the guest after the instruction.
    let mut flow = Flow::Continue;
    // An answer with no action that finishes a debug exit carries on as
    // `resume` would. The SDK's `resume()` is an empty list: cheaper for a
    // policy to build (nothing on its heap) and for the host to lift.
    let finishes_debug = actions
        .iter()
        .any(|a| matches!(a, Action::Resume | Action::Step | Action::RemoveBreakpoint));
    if !finishes_debug {
        continue_debug(event, vcpu, false)?;
    }
    for action in actions {
        match action {
            Action::Resume => continue_debug(event, vcpu, false)?,
            Action::CompleteRead(value) => completion.read = Some(*value),
            Action::Inject(e) => match event.kind {
                // An MSR #GP is delivered by the faulting instruction itself:
                // no ioctl, and RIP stays on the RDMSR/WRMSR.
                ExitKind::Msr(_) if *e == Exception::GP => completion.msr_fault = true,
                _ => vcpu.inject_exception(*e)?,
            },
            Action::SetReg { reg, value } => vcpu.set_reg(*reg, *value)?,
            Action::WritePhys { gpa, data } => env
                .mem
                .write_slice(data, GuestAddress(*gpa))
                .map_err(|e| ApplyError::Memory {
                    gpa: *gpa,
                    reason: e.to_string(),
                })?,
            Action::Stop(req) => flow = Flow::Stop(req.clone()),
            Action::Allow => perform_access(event, env, completion)?,
            // A denied write is dropped; a denied read reads all-ones (the
            // fallback below).
            Action::Deny => {}
            Action::UnprotectRetry => {
                if let ExitKind::MemViolation(v) = event.kind {
                    let page = GpaRange {
                        base: v.gpa & !(PAGE_SIZE - 1),
                        len: PAGE_SIZE,
                    };
                    env.protector.unprotect(page)?;
                }
                perform_access(event, env, completion)?
            }
            Action::Protect(req) => env.protector.protect(req.range, req.mode)?,
            Action::Unprotect(range) => env.protector.unprotect(*range)?,
            Action::Step => {
                let mut state = vcpu.debug_state();
                state.step_once = true;
                // Stepping off an execute breakpoint: disarm it for the one
                // instruction, or it fires again at the same RIP.
                if let ExitKind::Debug(d) = event.kind {
                    let slot = d.slot.map(|s| usize::from(s & 3));
                    if let Some(bp) = slot.and_then(|s| state.hw[s]) {
                        if bp.kind == HwBreakpointKind::Execute {
                            state.hw[slot.unwrap_or(0)] = None;
                            state.rearm = Some(((slot.unwrap_or(0)) as u8, bp));
                        }
                    }
                }
                vcpu.set_debug_state(state)?;
            }
            Action::RemoveBreakpoint => continue_debug(event, vcpu, true)?,
            // Rejected by validation until the control channel lands.
            Action::Pause => {}
        }
    }
    // An injected exception on a read still owes the guest a value for the
    // instruction KVM completes; give it all-ones.
    if completion.read.is_none() && !completion.msr_fault {
        if let Some(size) = event.kind.read_size() {
            completion.read = Some(crate::event::size_mask(size));
        }
    }
    Ok(flow)
}

//! Applies validated actions to a vCPU and guest memory.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{Action, Exception, ExitEvent, ExitKind, Reg, StopRequest};

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
    #[error("guest memory write at {gpa:#x} failed: {reason}")]
    Memory { gpa: u64, reason: String },
}

/// Applies `actions` (already checked by [`crate::validate`]) to finish
/// `event`.
pub fn apply(
    event: &ExitEvent,
    actions: &[Action],
    vcpu: &mut impl VcpuAccess,
    mem: &GuestMemoryMmap,
    completion: &mut Completion,
) -> Result<Flow, ApplyError> {
    // A handled HLT resumes the guest after the instruction.
    let mut flow = Flow::Continue;
    for action in actions {
        match action {
            Action::Resume => {}
            Action::CompleteRead(value) => completion.read = Some(*value),
            Action::Inject(e) => match event.kind {
                // An MSR #GP is delivered by the faulting instruction itself:
                // no ioctl, and RIP stays on the RDMSR/WRMSR.
                ExitKind::Msr(_) if *e == Exception::GP => completion.msr_fault = true,
                _ => vcpu.inject_exception(*e)?,
            },
            Action::SetReg { reg, value } => vcpu.set_reg(*reg, *value)?,
            Action::WritePhys { gpa, data } => {
                mem.write_slice(data, GuestAddress(*gpa))
                    .map_err(|e| ApplyError::Memory {
                        gpa: *gpa,
                        reason: e.to_string(),
                    })?
            }
            Action::Stop(req) => flow = Flow::Stop(req.clone()),
            // Rejected by validation until memory protection, debug and the
            // control channel land; never reached.
            Action::Allow
            | Action::Deny
            | Action::UnprotectRetry
            | Action::Protect(_)
            | Action::Unprotect(_)
            | Action::Step
            | Action::RemoveBreakpoint
            | Action::Pause => {}
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

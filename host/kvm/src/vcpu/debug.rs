//! Debug state: hardware breakpoints and single-step given to KVM,
//! re-arming an execute breakpoint after stepping over it, and the
//! registers a debugger (gdb) reads and writes while the vCPU is held.

use kvm_bindings::{
    kvm_fpu, kvm_guest_debug, kvm_regs, kvm_sregs, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_INJECT_BP,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};
use wasmvisor_exit::{DebugCause, DebugExit, DebugState, VcpuAccess, VcpuAccessError};

use super::{access_err, Vcpu};
use crate::KvmError;

impl Vcpu {
    /// [`VcpuAccess::set_debug_state`]: gives `d` to KVM and remembers it.
    pub(super) fn write_guest_debug(&mut self, d: DebugState) -> Result<(), VcpuAccessError> {
        self.guest_debug(d, 0)
    }

    /// Hands an int3 that trapped to the host (`KVM_GUESTDBG_USE_SW_BP`)
    /// but is the guest's own back to the guest: KVM delivers the `#BP`
    /// on the next run.
    pub fn reinject_int3(&mut self) -> Result<(), VcpuAccessError> {
        self.guest_debug(self.debug, KVM_GUESTDBG_INJECT_BP)
    }

    fn guest_debug(&mut self, d: DebugState, extra: u32) -> Result<(), VcpuAccessError> {
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
        if d.debugger_int3 {
            control |= KVM_GUESTDBG_USE_SW_BP;
        }
        let mut dbg = kvm_guest_debug {
            control: control | extra,
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

    /// Finishes a `KVM_EXIT_DEBUG` at `rip`. Returns `None` when the exit
    /// was the step over a disarmed execute breakpoint that nobody asked
    /// to see: the breakpoint is back and the guest should run on.
    pub(super) fn finish_debug_exit(
        &mut self,
        mut d: DebugExit,
        rip: u64,
    ) -> Result<Option<DebugExit>, KvmError> {
        // The step over a disarmed execute breakpoint: put it back,
        // and run on unless a policy asked to step as well.
        if let Some((slot, bp)) = self.debug.rearm {
            let mut state = self.debug;
            state.rearm = None;
            state.hw[usize::from(slot)] = Some(bp);
            let asked = state.step_always || state.step_once || state.debugger_step;
            self.set_debug_state(state)
                .map_err(|e| KvmError::Debug(e.to_string()))?;
            if !asked {
                return Ok(None);
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
        Ok(Some(d))
    }
}

/// The registers a debugger shows and edits: general, segment and
/// control registers, the x87/SSE state and IA32_KERNEL_GS_BASE.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DebuggerRegs {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    /// IA32_KERNEL_GS_BASE (the other GS base `SWAPGS` exchanges).
    pub kernel_gs_base: u64,
}

/// IA32_KERNEL_GS_BASE.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

impl Vcpu {
    /// The registers of a vCPU held at an exit boundary, for a debugger.
    /// The exit in flight is completed first ([`Vcpu::settle`]), so that
    /// RIP is past an I/O instruction KVM still had to finish.
    pub fn debugger_regs(&mut self) -> Result<DebuggerRegs, KvmError> {
        self.settle()?;
        Ok(DebuggerRegs {
            regs: self
                .fd
                .get_regs()
                .map_err(KvmError::ioctl("KVM_GET_REGS"))?,
            sregs: self
                .fd
                .get_sregs()
                .map_err(KvmError::ioctl("KVM_GET_SREGS"))?,
            fpu: self.fd.get_fpu().map_err(KvmError::ioctl("KVM_GET_FPU"))?,
            kernel_gs_base: self
                .read_msr(MSR_KERNEL_GS_BASE)
                .map_err(|e| KvmError::Debug(e.to_string()))?
                .unwrap_or(0),
        })
    }

    /// Writes what a debugger changed in `new` (read with
    /// [`Vcpu::debugger_regs`]); parts equal to the vCPU's are left alone.
    pub fn set_debugger_regs(&mut self, new: &DebuggerRegs) -> Result<(), KvmError> {
        let now = self.debugger_regs()?;
        if now.sregs != new.sregs {
            self.fd
                .set_sregs(&new.sregs)
                .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
        }
        if now.regs != new.regs {
            self.fd
                .set_regs(&new.regs)
                .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
            if self.sync_regs {
                // The copy in kvm_run is what the next exit's readers see
                // until KVM refreshes it; keep it in step (not dirty: KVM
                // already has the values).
                self.fd.sync_regs_mut().regs = new.regs;
            }
        }
        if now.fpu != new.fpu {
            self.fd
                .set_fpu(&new.fpu)
                .map_err(KvmError::ioctl("KVM_SET_FPU"))?;
        }
        if now.kernel_gs_base != new.kernel_gs_base {
            let written = self
                .write_msr(MSR_KERNEL_GS_BASE, new.kernel_gs_base)
                .map_err(|e| KvmError::Debug(e.to_string()))?;
            if !written {
                return Err(KvmError::Debug(
                    "KVM refused IA32_KERNEL_GS_BASE".to_string(),
                ));
            }
        }
        self.regs = None;
        self.sregs = None;
        Ok(())
    }
}

//! Debug state: hardware breakpoints and single-step given to KVM, and
//! re-arming an execute breakpoint after stepping over it.

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use wasmvisor_exit::{DebugCause, DebugExit, DebugState, VcpuAccess, VcpuAccessError};

use super::{access_err, Vcpu};
use crate::KvmError;

impl Vcpu {
    /// [`VcpuAccess::set_debug_state`]: gives `d` to KVM and remembers it.
    pub(super) fn write_guest_debug(&mut self, d: DebugState) -> Result<(), VcpuAccessError> {
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
            let asked = state.step_always || state.step_once;
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

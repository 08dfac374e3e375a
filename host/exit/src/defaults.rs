//! The host's answer to an exit nobody claimed (documented in
//! `docs/routing.md`): reads of unclaimed ports and MMIO return all-ones,
//! writes are dropped, MSRs go to KVM's own emulation (and #GP if KVM
//! does not know them), an access to a protected page goes through to
//! RAM, HLT halts the vCPU, a shutdown stops the VM.

use crate::apply::{ApplyError, Completion, Flow, GuestEnv, VcpuAccess};
use crate::event::size_mask;
use crate::perform_access;
use crate::{Direction, ExitEvent, ExitKind, MsrReason, StopRequest};

/// Finishes `event` the default way.
pub fn default_actions(
    event: &ExitEvent,
    vcpu: &mut impl VcpuAccess,
    env: &GuestEnv<'_>,
    completion: &mut Completion,
) -> Result<Flow, ApplyError> {
    match event.kind {
        ExitKind::Io(io) => {
            if io.direction == Direction::Read {
                completion.read = Some(size_mask(io.size));
            }
        }
        ExitKind::Mmio(m) => {
            if m.direction == Direction::Read {
                completion.read = Some(size_mask(m.size));
            }
        }
        ExitKind::Msr(m) => match (m.reason, m.direction) {
            // Subscribed but declined by every policy: let KVM emulate it.
            (MsrReason::Filtered, Direction::Read) => match vcpu.host_rdmsr(m.index)? {
                Some(v) => completion.read = Some(v),
                None => completion.msr_fault = true,
            },
            (MsrReason::Filtered, Direction::Write) => {
                completion.msr_fault = !vcpu.host_wrmsr(m.index, m.value)?;
            }
            (MsrReason::Unknown | MsrReason::Invalid, _) => completion.msr_fault = true,
        },
        // A protected page nobody answered for: the access goes through,
        // as if unprotected (the protecting policy declined it).
        ExitKind::MemViolation(_) => perform_access(event, env, completion)?,
        // Nobody answered a debug exit: continue.
        ExitKind::Debug(_) => {
            return crate::apply(event, &[crate::Action::Resume], vcpu, env, completion)
        }
        ExitKind::Hlt => return Ok(Flow::Halt),
        ExitKind::Shutdown { reason } => {
            return Ok(Flow::Stop(StopRequest {
                clean: false,
                reason: format!("guest {reason:?}"),
            }))
        }
    }
    Ok(Flow::Continue)
}

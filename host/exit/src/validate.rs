//! Checks every action against the exit it answers and the policy's grants.
//!
//! A policy's verdict is applied all or nothing: if any action fails a
//! check the whole list is a policy fault and nothing is applied, so a bad
//! answer can never leave guest state half-changed.

use crate::GuestRam;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::event::size_mask;
use crate::{
    Action, Capabilities, Exception, ExitEvent, ExitKind, GpaRange, ProtectRequest, Protection,
    Reg, PAGE_SIZE,
};

/// Largest guest-memory write one action may carry.
pub const MAX_WRITE_LEN: usize = 64 * 1024;

/// Why a policy's answer was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ActionFault {
    /// The action makes no sense for this kind of exit.
    #[error("action {action} does not apply to a{exit_article} {exit} exit")]
    WrongExit {
        action: &'static str,
        exit: &'static str,
        exit_article: &'static str,
    },
    /// A read was completed with a value wider than the access.
    #[error("complete-read value {value:#x} does not fit a {size}-byte read")]
    WrongSize { value: u64, size: u8 },
    /// A read exit was handled without saying what the guest reads.
    #[error("a {exit} read was handled without complete-read, inject or stop")]
    ReadUnanswered { exit: &'static str },
    /// Two actions both try to finish the same exit.
    #[error("more than one action completes the exit ({first} and {second})")]
    Conflicting {
        first: &'static str,
        second: &'static str,
    },
    /// The policy asked for something it was not granted.
    #[error("action {action} needs the {capability} capability, which the policy does not hold")]
    NotGranted {
        action: &'static str,
        capability: &'static str,
    },
    /// A memory write outside guest RAM.
    #[error("write-phys of {len} bytes at {gpa:#x} is outside guest RAM")]
    OutOfRam { gpa: u64, len: usize },
    /// A memory write larger than one action may carry.
    #[error("write-phys of {len} bytes exceeds the {MAX_WRITE_LEN}-byte limit")]
    TooLarge { len: usize },
    /// An exception that cannot be injected as asked.
    #[error("cannot inject vector {vector}{detail}")]
    BadException { vector: u8, detail: &'static str },
    /// A register write that the host refuses regardless of grants.
    #[error("set-reg of {0} is not allowed")]
    BadRegister(&'static str),
    /// A protect or unprotect range that is not whole pages of RAM.
    #[error("range {base:#x}+{len:#x} is not whole 4 KiB pages of guest RAM")]
    BadRange { base: u64, len: u64 },
    /// The host cannot do this yet.
    #[error("{0} is not supported by this host")]
    Unsupported(&'static str),
}

/// A protect or unprotect range must be whole pages of RAM.
fn check_pages(range: GpaRange, mem: &GuestRam) -> Result<(), ActionFault> {
    let aligned = range.base.is_multiple_of(PAGE_SIZE)
        && range.len.is_multiple_of(PAGE_SIZE)
        && range.len > 0;
    let in_ram =
        usize::try_from(range.len).is_ok_and(|len| mem.check_range(GuestAddress(range.base), len));
    if aligned && in_ram {
        Ok(())
    } else {
        Err(ActionFault::BadRange {
            base: range.base,
            len: range.len,
        })
    }
}

/// True for vectors whose exceptions push an error code.
fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

fn article(exit: &'static str) -> &'static str {
    if exit.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "n"
    } else {
        ""
    }
}

/// What an accepted action does to the exit it answers.
#[derive(Clone, Copy)]
struct Effect {
    /// It finishes the exit: at most one action may.
    finishes: bool,
    /// It says what the guest reads (or makes that moot).
    answers_read: bool,
}

impl Effect {
    /// Neither finishes the exit nor answers a read.
    const NONE: Effect = Effect {
        finishes: false,
        answers_read: false,
    };
    /// Finishes the exit without answering a read.
    const FINISHES: Effect = Effect {
        finishes: true,
        answers_read: false,
    };
    /// Answers a read without finishing the exit.
    const ANSWERS_READ: Effect = Effect {
        finishes: false,
        answers_read: true,
    };
    /// Finishes the exit and answers a read.
    const FINISHES_READ: Effect = Effect {
        finishes: true,
        answers_read: true,
    };
}

/// Checks `actions` as an answer to `event` from a policy holding `grants`.
pub fn validate(
    event: &ExitEvent,
    actions: &[Action],
    grants: Capabilities,
    mem: &GuestRam,
) -> Result<(), ActionFault> {
    // The action that finishes the exit, if any: at most one is allowed.
    let mut finisher: Option<&'static str> = None;
    let mut answered_read = false;
    for action in actions {
        let effect = check_action(event, action, grants, mem)?;
        if effect.finishes {
            finish(&mut finisher, action)?;
        }
        answered_read |= effect.answers_read;
    }
    check_read_answered(event, answered_read)
}

/// Checks one action on its own; what it does to the exit is checked
/// against the other actions by [`validate`].
fn check_action(
    event: &ExitEvent,
    action: &Action,
    grants: Capabilities,
    mem: &GuestRam,
) -> Result<Effect, ActionFault> {
    match action {
        Action::Resume => Ok(Effect::FINISHES),
        Action::CompleteRead(value) => check_complete_read(event, action, *value),
        Action::Inject(e) => check_inject(event, action, e),
        Action::SetReg { reg, .. } => check_set_reg(grants, action, reg),
        Action::WritePhys { gpa, data } => check_write_phys(grants, mem, action, *gpa, data),
        Action::Allow | Action::Deny | Action::UnprotectRetry => {
            check_violation_verdict(event, grants, action)
        }
        Action::Protect(req) => check_protect(grants, mem, action, req),
        Action::Unprotect(range) => {
            need(grants.protect_memory, action, "protect-memory")?;
            check_pages(*range, mem)?;
            Ok(Effect::NONE)
        }
        Action::Step | Action::RemoveBreakpoint => check_debug(event, grants, action),
        Action::Pause => Err(ActionFault::Unsupported(action.name())),
        Action::Stop(_) => {
            need(grants.stop_vm, action, "stop-vm")?;
            Ok(Effect::FINISHES_READ)
        }
    }
}

/// Notes that `action` finishes the exit, unless an earlier one did.
fn finish(finisher: &mut Option<&'static str>, action: &Action) -> Result<(), ActionFault> {
    match *finisher {
        Some(first) => Err(ActionFault::Conflicting {
            first,
            second: action.name(),
        }),
        None => {
            *finisher = Some(action.name());
            Ok(())
        }
    }
}

/// A read exit must be told what the guest reads.
fn check_read_answered(event: &ExitEvent, answered_read: bool) -> Result<(), ActionFault> {
    if event.kind.read_size().is_some() && !answered_read {
        return Err(ActionFault::ReadUnanswered {
            exit: event.kind.name(),
        });
    }
    Ok(())
}

/// `action` does not apply to `event`'s kind of exit.
fn wrong_exit(event: &ExitEvent, action: &Action) -> ActionFault {
    let exit = event.kind.name();
    ActionFault::WrongExit {
        action: action.name(),
        exit,
        exit_article: article(exit),
    }
}

/// `action` needs `capability`, held if `granted`.
fn need(granted: bool, action: &Action, capability: &'static str) -> Result<(), ActionFault> {
    if granted {
        Ok(())
    } else {
        Err(ActionFault::NotGranted {
            action: action.name(),
            capability,
        })
    }
}

/// complete-read: only for a read, with a value that fits the access.
fn check_complete_read(
    event: &ExitEvent,
    action: &Action,
    value: u64,
) -> Result<Effect, ActionFault> {
    let Some(size) = event.kind.read_size() else {
        return Err(wrong_exit(event, action));
    };
    if value & !size_mask(size) != 0 {
        return Err(ActionFault::WrongSize { value, size });
    }
    Ok(Effect::FINISHES_READ)
}

/// inject: an exception a policy may raise, with an error code exactly
/// when its vector pushes one, never in answer to a shutdown.
fn check_inject(event: &ExitEvent, action: &Action, e: &Exception) -> Result<Effect, ActionFault> {
    if e.vector > 31 || matches!(e.vector, 2 | 9 | 15 | 22..=27 | 31) {
        return Err(ActionFault::BadException {
            vector: e.vector,
            detail: ": not an exception vector a policy may raise",
        });
    }
    if e.error_code.is_some() != pushes_error_code(e.vector) {
        return Err(ActionFault::BadException {
            vector: e.vector,
            detail: if e.error_code.is_some() {
                " with an error code: this vector has none"
            } else {
                " without an error code: this vector needs one"
            },
        });
    }
    if matches!(event.kind, ExitKind::Shutdown { .. }) {
        return Err(wrong_exit(event, action));
    }
    Ok(Effect::ANSWERS_READ)
}

/// set-reg: granted, and never of CR8.
fn check_set_reg(grants: Capabilities, action: &Action, reg: &Reg) -> Result<Effect, ActionFault> {
    need(grants.set_registers, action, "set-registers")?;
    if matches!(reg, Reg::Cr8) {
        return Err(ActionFault::BadRegister("cr8"));
    }
    Ok(Effect::NONE)
}

/// write-phys: granted, within the size limit and inside guest RAM.
fn check_write_phys(
    grants: Capabilities,
    mem: &GuestRam,
    action: &Action,
    gpa: u64,
    data: &[u8],
) -> Result<Effect, ActionFault> {
    need(grants.write_memory, action, "write-memory")?;
    if data.len() > MAX_WRITE_LEN {
        return Err(ActionFault::TooLarge { len: data.len() });
    }
    if !data.is_empty() && !mem.check_range(GuestAddress(gpa), data.len()) {
        return Err(ActionFault::OutOfRam {
            gpa,
            len: data.len(),
        });
    }
    Ok(Effect::NONE)
}

/// allow, deny and unprotect-retry: only for a memory violation;
/// unprotect-retry needs the protect-memory grant.
fn check_violation_verdict(
    event: &ExitEvent,
    grants: Capabilities,
    action: &Action,
) -> Result<Effect, ActionFault> {
    if !matches!(event.kind, ExitKind::MemViolation(_)) {
        return Err(wrong_exit(event, action));
    }
    if *action == Action::UnprotectRetry {
        need(grants.protect_memory, action, "protect-memory")?;
    }
    Ok(Effect::FINISHES_READ)
}

/// protect: granted, a mode the host can enforce, whole pages of RAM.
fn check_protect(
    grants: Capabilities,
    mem: &GuestRam,
    action: &Action,
    req: &ProtectRequest,
) -> Result<Effect, ActionFault> {
    need(grants.protect_memory, action, "protect-memory")?;
    if req.mode == Protection::NoExecute {
        return Err(ActionFault::Unsupported(
            "execute protection (stock KVM cannot trap instruction fetches)",
        ));
    }
    check_pages(req.range, mem)?;
    Ok(Effect::NONE)
}

/// step and remove-breakpoint: only for a debug exit, and granted.
fn check_debug(
    event: &ExitEvent,
    grants: Capabilities,
    action: &Action,
) -> Result<Effect, ActionFault> {
    if !matches!(event.kind, ExitKind::Debug(_)) {
        return Err(wrong_exit(event, action));
    }
    need(grants.debug, action, "debug")?;
    Ok(Effect::FINISHES)
}

//! Checks every action against the exit it answers and the policy's grants.
//!
//! A policy's verdict is applied all or nothing: if any action fails a
//! check the whole list is a policy fault and nothing is applied, so a bad
//! answer can never leave guest state half-changed.

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::event::size_mask;
use crate::{Action, Capabilities, ExitEvent, ExitKind, GpaRange, Protection, PAGE_SIZE};

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
fn check_pages(range: GpaRange, mem: &GuestMemoryMmap) -> Result<(), ActionFault> {
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

/// Checks `actions` as an answer to `event` from a policy holding `grants`.
pub fn validate(
    event: &ExitEvent,
    actions: &[Action],
    grants: Capabilities,
    mem: &GuestMemoryMmap,
) -> Result<(), ActionFault> {
    let exit = event.kind.name();
    let wrong = |action: &Action| ActionFault::WrongExit {
        action: action.name(),
        exit,
        exit_article: article(exit),
    };
    let need = |granted: bool, action: &Action, capability: &'static str| {
        if granted {
            Ok(())
        } else {
            Err(ActionFault::NotGranted {
                action: action.name(),
                capability,
            })
        }
    };
    // The action that finishes the exit, if any: at most one is allowed.
    let mut finisher: Option<&'static str> = None;
    let mut finish = |action: &Action| match finisher {
        Some(first) => Err(ActionFault::Conflicting {
            first,
            second: action.name(),
        }),
        None => {
            finisher = Some(action.name());
            Ok(())
        }
    };
    let mut answered_read = false;
    for action in actions {
        match action {
            Action::Resume => finish(action)?,
            Action::CompleteRead(value) => {
                let Some(size) = event.kind.read_size() else {
                    return Err(wrong(action));
                };
                if value & !size_mask(size) != 0 {
                    return Err(ActionFault::WrongSize {
                        value: *value,
                        size,
                    });
                }
                finish(action)?;
                answered_read = true;
            }
            Action::Inject(e) => {
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
                    return Err(wrong(action));
                }
                answered_read = true;
            }
            Action::SetReg { reg, .. } => {
                need(grants.set_registers, action, "set-registers")?;
                if matches!(reg, crate::Reg::Cr8) {
                    return Err(ActionFault::BadRegister("cr8"));
                }
            }
            Action::WritePhys { gpa, data } => {
                need(grants.write_memory, action, "write-memory")?;
                if data.len() > MAX_WRITE_LEN {
                    return Err(ActionFault::TooLarge { len: data.len() });
                }
                if !data.is_empty() && !mem.check_range(GuestAddress(*gpa), data.len()) {
                    return Err(ActionFault::OutOfRam {
                        gpa: *gpa,
                        len: data.len(),
                    });
                }
            }
            Action::Allow | Action::Deny | Action::UnprotectRetry => {
                if !matches!(event.kind, ExitKind::MemViolation(_)) {
                    return Err(wrong(action));
                }
                if *action == Action::UnprotectRetry {
                    need(grants.protect_memory, action, "protect-memory")?;
                }
                finish(action)?;
                answered_read = true;
            }
            Action::Protect(req) => {
                need(grants.protect_memory, action, "protect-memory")?;
                if req.mode == Protection::NoExecute {
                    return Err(ActionFault::Unsupported(
                        "execute protection (stock KVM cannot trap instruction fetches)",
                    ));
                }
                check_pages(req.range, mem)?;
            }
            Action::Unprotect(range) => {
                need(grants.protect_memory, action, "protect-memory")?;
                check_pages(*range, mem)?;
            }
            Action::Step | Action::RemoveBreakpoint => {
                if !matches!(event.kind, ExitKind::Debug(_)) {
                    return Err(wrong(action));
                }
                need(grants.debug, action, "debug")?;
                finish(action)?;
            }
            Action::Pause => return Err(ActionFault::Unsupported(action.name())),
            Action::Stop(_) => {
                need(grants.stop_vm, action, "stop-vm")?;
                finish(action)?;
                answered_read = true;
            }
        }
    }
    if event.kind.read_size().is_some() && !answered_read {
        return Err(ActionFault::ReadUnanswered { exit });
    }
    Ok(())
}

//! Actions: what a policy asks the host to do to finish an exit.

use crate::{GpaRange, Reg};

/// An exception to raise in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
}

impl Exception {
    /// General protection fault with error code 0.
    pub const GP: Exception = Exception {
        vector: 13,
        error_code: Some(0),
    };
}

/// Memory protection modes (mirrors the WIT `protection` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protection {
    WriteProtect,
    NoAccess,
    /// Stock KVM cannot trap instruction fetches; always refused.
    NoExecute,
}

/// Protect a range in one mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectRequest {
    pub range: GpaRange,
    pub mode: Protection,
}

/// Stop the whole VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    /// `true` ends the process with exit code 0, `false` with 4.
    pub clean: bool,
    pub reason: String,
}

/// One action (mirrors the WIT `action` variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Resume,
    CompleteRead(u64),
    Inject(Exception),
    SetReg { reg: Reg, value: u64 },
    WritePhys { gpa: u64, data: Vec<u8> },
    Allow,
    Deny,
    UnprotectRetry,
    Protect(ProtectRequest),
    Unprotect(GpaRange),
    Step,
    RemoveBreakpoint,
    Pause,
    Stop(StopRequest),
}

impl Action {
    /// Short name used in fault messages.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Resume => "resume",
            Action::CompleteRead(_) => "complete-read",
            Action::Inject(_) => "inject",
            Action::SetReg { .. } => "set-reg",
            Action::WritePhys { .. } => "write-phys",
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::UnprotectRetry => "unprotect-retry",
            Action::Protect(_) => "protect",
            Action::Unprotect(_) => "unprotect",
            Action::Step => "step",
            Action::RemoveBreakpoint => "remove-breakpoint",
            Action::Pause => "pause",
            Action::Stop(_) => "stop",
        }
    }
}

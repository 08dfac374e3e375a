//! How a VM run ended, and the process exit code for each ending
//! (documented in the README's "Exit codes" table).

use wasmvisor_kvm::FatalExit;

/// Every vCPU halted, or a policy stopped the VM cleanly.
pub const EXIT_OK: i32 = 0;
/// wasmvisor itself failed: bad input, a missing file, a KVM error.
pub const EXIT_HOST_ERROR: i32 = 1;
/// Command-line usage error (clap's convention).
pub const EXIT_USAGE: i32 = 2;
/// The guest died: triple fault, KVM internal error or entry failure.
pub const EXIT_GUEST_FAULT: i32 = 3;
/// A policy stopped the VM and called it a failure.
pub const EXIT_POLICY_STOP: i32 = 4;
/// A policy set to fail closed with `@on-fault=stop` faulted.
pub const EXIT_POLICY_FAULT: i32 = 5;

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// Every vCPU executed HLT with nothing left to wake it.
    Halted,
    /// A policy returned a stop action.
    Stopped {
        policy: String,
        clean: bool,
        reason: String,
    },
    /// A vCPU hit a fatal exit.
    GuestFault(FatalExit),
    /// A fail-closed policy faulted.
    PolicyFault { policy: String, reason: String },
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The host failed while the guest ran (an ioctl error).
    HostFailure(String),
    /// The guest reset the machine (the i8042 reset line); wasmvisor does
    /// not reboot it.
    Reset,
    /// The guest wrote `value` to the debug-exit port (`--device
    /// debug-exit`).
    DebugExit { port: u16, value: u32 },
    /// gdb ended the run (`kill`).
    Debugger(String),
}

impl VmOutcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmOutcome::Halted | VmOutcome::Reset | VmOutcome::Debugger(_) => EXIT_OK,
            VmOutcome::Stopped { clean: true, .. } => EXIT_OK,
            VmOutcome::Stopped { clean: false, .. } => EXIT_POLICY_STOP,
            VmOutcome::GuestFault(_) => EXIT_GUEST_FAULT,
            VmOutcome::PolicyFault { .. } => EXIT_POLICY_FAULT,
            VmOutcome::Signal(n) => 128 + n,
            VmOutcome::HostFailure(_) => EXIT_HOST_ERROR,
            // QEMU's isa-debug-exit calls exit((value << 1) | 1); the
            // parent sees the low 8 bits of that.
            VmOutcome::DebugExit { value, .. } => ((value << 1) | 1) as i32 & 0xff,
        }
    }

    /// One line describing the ending.
    pub fn describe(&self) -> String {
        match self {
            VmOutcome::Halted => "all vCPUs halted".to_string(),
            VmOutcome::Stopped {
                policy,
                clean,
                reason,
            } => format!(
                "stopped by policy {policy} ({}): {reason}",
                if *clean { "clean" } else { "failure" }
            ),
            VmOutcome::GuestFault(f) => format!("guest fault: {f}"),
            VmOutcome::PolicyFault { policy, reason } => {
                format!("stopped: policy {policy} faulted and fails closed: {reason}")
            }
            VmOutcome::Signal(n) => format!("stopped by signal {n}"),
            VmOutcome::HostFailure(e) => format!("host failure: {e}"),
            VmOutcome::Reset => {
                "the guest reset the machine (i8042 reset line); not rebooting".to_string()
            }
            VmOutcome::Debugger(why) => format!("stopped from gdb: {why}"),
            VmOutcome::DebugExit { port, value } => format!(
                "the guest wrote {value:#x} to the debug-exit port {port:#x}: exit code {}",
                self.exit_code()
            ),
        }
    }

    /// Which of two endings wins when vCPUs end differently: the most
    /// severe one.
    pub(crate) fn severity(&self) -> u8 {
        match self {
            VmOutcome::Halted => 0,
            VmOutcome::Stopped { clean: true, .. }
            | VmOutcome::Reset
            | VmOutcome::Debugger(_)
            | VmOutcome::DebugExit { .. } => 1,
            VmOutcome::Signal(_) => 2,
            VmOutcome::Stopped { clean: false, .. } => 3,
            VmOutcome::PolicyFault { .. } => 4,
            VmOutcome::GuestFault(_) => 5,
            VmOutcome::HostFailure(_) => 6,
        }
    }
}

//! The kernel profile from a policy's side: the `kernel-*` host imports
//! turned into values or one [`Failure`] that says, in words, what could
//! not be found. The Linux policies (linux-info, linux-tasks,
//! syscall-guard) share it.

use crate::{host, HostError};

/// What a policy says when the VM has no kernel profile.
pub const NO_PROFILE: &str = "no kernel profile (boot with --kernel or pass --kernel-profile)";

/// Why the kernel could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `unsupported`: the VM has no kernel profile.
    NoProfile,
    /// Anything else, in words.
    Other(String),
}

impl Failure {
    /// The failure as one line for an event or a log.
    pub fn message(&self) -> &str {
        match self {
            Failure::NoProfile => NO_PROFILE,
            Failure::Other(message) => message,
        }
    }
}

/// Turns a `kernel-*` answer into a value: `none` and errors are failures
/// naming `what`.
pub fn known(answer: Result<Option<u64>, HostError>, what: &str) -> Result<u64, Failure> {
    match answer {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(Failure::Other(format!("the kernel profile has no {what}"))),
        Err(HostError::Unsupported) => Err(Failure::NoProfile),
        Err(e) => Err(Failure::Other(format!("{what}: {}", e.name()))),
    }
}

/// The relocated address of kernel symbol `name`.
pub fn symbol(name: &str) -> Result<u64, Failure> {
    known(host::kernel_symbol(name), &format!("symbol `{name}`"))
}

/// The offset of member `path` (`task_struct.tasks.next`).
pub fn member(path: &str) -> Result<u64, Failure> {
    known(
        host::kernel_member_offset(path),
        &format!("member `{path}`"),
    )
}

/// `addr` as `name+0xoff`, or `?` where no symbol lies at or below it.
pub fn symbolized(addr: u64) -> String {
    match host::kernel_symbolize(addr) {
        Ok(Some((name, off))) => format!("{name}+{off:#x}"),
        _ => "?".to_string(),
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::{FakeHost, KernelProfile};

    #[test]
    fn answers_become_values_or_failures_in_words() {
        let host = FakeHost::new();
        let _installed = host.install();
        assert_eq!(symbol("init_task"), Err(Failure::NoProfile));
        assert_eq!(Failure::NoProfile.message(), NO_PROFILE);
        host.set_kernel_profile(
            KernelProfile::new()
                .symbol("init_task", 0xffff_ffff_82a1_aa40)
                .member("task_struct.pid", 2416),
        );
        assert_eq!(symbol("init_task"), Ok(0xffff_ffff_82a1_aa40));
        assert_eq!(member("task_struct.pid"), Ok(2416));
        assert_eq!(
            member("task_struct.nope").unwrap_err().message(),
            "the kernel profile has no member `task_struct.nope`"
        );
        assert_eq!(symbolized(0xffff_ffff_82a1_aa48), "init_task+0x8");
        assert_eq!(symbolized(0x10), "?");
    }
}

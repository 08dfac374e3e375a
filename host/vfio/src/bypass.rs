//! Interrupt bypass: a hypervisor that takes a function's eventfds itself
//! (KVM irqfds with GSI routes), so device interrupts reach the guest
//! without waking the VMM. The function keeps the routes in step with
//! what the guest programs: a vector is attached while it is enabled and
//! unmasked, and detached otherwise, so a signal on a masked vector comes
//! back to the VMM and becomes a pending bit in the shadow.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;
use wasmvisor_pci::{InterruptError, MsiMessage};

/// What the VMM's hypervisor can do with a function's eventfds.
pub trait IrqBypass: Send + Sync {
    /// Makes a signal on `fd` inject `message`, replacing whatever route
    /// `fd` had.
    fn attach_msi(&self, fd: &EventFd, message: MsiMessage) -> Result<(), InterruptError>;

    /// Gives `fd`'s signals back to the VMM.
    fn detach_msi(&self, fd: &EventFd) -> Result<(), InterruptError>;

    /// Makes a signal on `fd` assert the function's INTx line until the
    /// guest's EOI, which lowers it and signals `resample`.
    fn attach_intx(&self, fd: &EventFd, resample: &EventFd) -> Result<(), InterruptError>;

    /// Undoes [`IrqBypass::attach_intx`].
    fn detach_intx(&self, fd: &EventFd) -> Result<(), InterruptError>;
}

/// A change to the routes, as [`RecordedBypass`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassCall {
    /// An MSI eventfd routed (raw fd, message).
    AttachMsi(i32, MsiMessage),
    /// An MSI eventfd back to the VMM.
    DetachMsi(i32),
    /// INTx routed (raw fd of the trigger).
    AttachIntx(i32),
    /// INTx back to the VMM.
    DetachIntx(i32),
}

/// An [`IrqBypass`] that records its calls and routes nothing, for tests.
#[derive(Debug, Default)]
pub struct RecordedBypass {
    calls: Mutex<Vec<BypassCall>>,
}

impl RecordedBypass {
    /// The calls since the last `take`.
    pub fn take(&self) -> Vec<BypassCall> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, call: BypassCall) -> Result<(), InterruptError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
        Ok(())
    }
}

fn raw(fd: &EventFd) -> i32 {
    std::os::fd::AsRawFd::as_raw_fd(fd)
}

impl IrqBypass for RecordedBypass {
    fn attach_msi(&self, fd: &EventFd, message: MsiMessage) -> Result<(), InterruptError> {
        self.push(BypassCall::AttachMsi(raw(fd), message))
    }

    fn detach_msi(&self, fd: &EventFd) -> Result<(), InterruptError> {
        self.push(BypassCall::DetachMsi(raw(fd)))
    }

    fn attach_intx(&self, fd: &EventFd, _resample: &EventFd) -> Result<(), InterruptError> {
        self.push(BypassCall::AttachIntx(raw(fd)))
    }

    fn detach_intx(&self, fd: &EventFd) -> Result<(), InterruptError> {
        self.push(BypassCall::DetachIntx(raw(fd)))
    }
}

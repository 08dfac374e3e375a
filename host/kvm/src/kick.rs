//! Kicking vCPU threads out of `KVM_RUN` so the VM can stop promptly.
//!
//! Firecracker's pattern: each vCPU thread publishes its `kvm_run` in a
//! thread-local; a real-time signal sent to the thread sets
//! `immediate_exit` there, so `KVM_RUN` returns `EINTR` whether the
//! signal landed before or during the ioctl.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{fence, Ordering};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::{KvmError, Vcpu};

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(null_mut()) };
}

extern "C" fn kick_handler(_: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    KVM_RUN.with(|cell| {
        let run = cell.get();
        if !run.is_null() {
            // SAFETY: the pointer was published by this very thread from
            // its live `Vcpu` (see `Kicker::arm`) and is cleared before the
            // vCPU is dropped; writing one byte of `immediate_exit` is
            // async-signal-safe.
            unsafe { (*run).immediate_exit = 1 };
            fence(Ordering::Release);
        }
    });
}

/// Installs the kick signal handler; call once per process.
pub fn install_kick_handler() -> Result<(), KvmError> {
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| KvmError::BadBootState(format!("cannot install the vCPU kick handler: {e}")))
}

/// Publishes a vCPU for kicking on the current thread while alive.
pub struct Kicker {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Kicker {
    /// Arms kicks for `vcpu`, which must stay on this thread and outlive
    /// the returned guard.
    pub fn arm(vcpu: &mut Vcpu) -> Kicker {
        let run = vcpu.kvm_run_ptr();
        KVM_RUN.with(|cell| cell.set(run));
        Kicker {
            _not_send: std::marker::PhantomData,
        }
    }

    /// Sends the kick signal to a vCPU thread.
    pub fn kick<T>(thread: &JoinHandle<T>) {
        // A thread that already finished cannot be signalled; that's fine.
        let _ = thread.kill(SIGRTMIN());
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        KVM_RUN.with(|cell| cell.set(null_mut()));
    }
}

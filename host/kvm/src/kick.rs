//! Kicking vCPU threads out of `KVM_RUN` so the VM can stop promptly.
//!
//! Firecracker's pattern: each vCPU thread publishes its `kvm_run` in a
//! thread-local; a real-time signal sent to the thread sets
//! `immediate_exit` there, so `KVM_RUN` returns `EINTR` whether the
//! signal landed before or during the ioctl.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::os::unix::thread::JoinHandleExt;
use std::ptr::null_mut;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Mutex, PoisonError};
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

/// A vCPU thread as the kick list holds it.
struct Thread(libc::pthread_t);

// SAFETY: a `Thread` only exists inside a `KickList` entry, which holds
// it from `register` (a live, joinable thread) until `leave` (called by the
// thread itself before it exits) or `clear` (called before joining), and
// is only signalled under the list's lock: the handle is valid whenever
// `kill` uses it.
unsafe impl Killable for Thread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

#[derive(Default)]
struct Entry {
    thread: Option<Thread>,
    /// The thread left its run loop: never signal it again.
    left: bool,
}

/// The vCPU threads of one VM, kickable from any thread (the policy
/// coordinator pulls every vCPU to an exit boundary without a hop through
/// the thread that owns the join handles).
///
/// A thread is signalled only while it is registered and has not left,
/// under the list's lock; a thread leaves (under the same lock) before it
/// exits, and the owner clears the list before joining. So a signal never
/// targets a thread whose handle is gone.
pub struct KickList {
    entries: Mutex<Vec<Entry>>,
}

impl KickList {
    pub fn new(vcpus: usize) -> KickList {
        KickList {
            entries: Mutex::new((0..vcpus).map(|_| Entry::default()).collect()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers vCPU `index`'s thread (by the thread that spawned it).
    pub fn register<T>(&self, index: usize, thread: &JoinHandle<T>) {
        if let Some(e) = self.lock().get_mut(index) {
            if !e.left {
                e.thread = Some(Thread(thread.as_pthread_t()));
            }
        }
    }

    /// vCPU `index` leaves its run loop (called on its own thread).
    pub fn leave(&self, index: usize) {
        if let Some(e) = self.lock().get_mut(index) {
            e.left = true;
            e.thread = None;
        }
    }

    /// Kicks every registered vCPU thread that has not left.
    pub fn kick_all(&self) {
        for e in self.lock().iter() {
            if let Some(t) = &e.thread {
                let _ = t.kill(SIGRTMIN());
            }
        }
    }

    /// Forgets every thread; call before joining them.
    pub fn clear(&self) {
        for e in self.lock().iter_mut() {
            e.thread = None;
        }
    }
}

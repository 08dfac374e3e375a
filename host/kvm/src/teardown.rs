//! Leaving the kernel's VM teardown to a helper that outlives the process.
//!
//! Closing the last file descriptor of a VM with an in-kernel irqchip
//! makes the kernel unregister the PIC and IOAPIC from the VM's I/O buses,
//! each with an SRCU grace period: about 16 ms on this host for a VM whose
//! guest ran for a millisecond (docs/performance.md §8). A process that
//! simply exits pays it too, before its parent learns that it exited.
//!
//! [`hand_off`] starts a helper that shares this process's memory
//! (`CLONE_VM`, so nothing is copied) and holds a copy of its KVM file
//! descriptors and nothing else: standard streams, sockets and pipes are
//! closed in the helper at once, so nobody reading our output waits for
//! it. The helper then blocks until this process has exited, and exits
//! itself: the last references to the VM, and the guest RAM mapping, go
//! away there. This process's own exit is then quick.

use std::io;
use std::os::raw::{c_int, c_void};

/// What the helper needs, prepared before it starts (it may not allocate:
/// it runs on a borrowed address space without its own thread state).
struct Helper {
    /// Descriptors that are not KVM objects, closed first.
    close: Vec<c_int>,
    /// The read end of a pipe whose write end only this process holds.
    parent_gone: c_int,
}

/// Stack of the helper, in bytes: it calls three system calls.
const STACK: usize = 64 * 1024;

/// Hands the last references to this process's KVM objects to a helper
/// process that waits for this one to exit, then closes them. Call it
/// when nothing is left to do but exit; the caller should then exit
/// without dropping the VM (see `wasmvisor_vmm::Remains`). An error means
/// no helper was started, and the teardown happens at exit as usual.
pub fn hand_off() -> io::Result<()> {
    if under_valgrind() {
        return Ok(());
    }
    let mut pipe = [0 as c_int; 2];
    // SAFETY: `pipe` is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = pipe;
    let close = match helper_closes(read_end) {
        Ok(Some(close)) => close,
        other => {
            // SAFETY: closing the pipe created above, which nothing else uses.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            return other.map(|_| ());
        }
    };
    // Leaked on purpose: the helper uses both after this function returns,
    // until long after this process is gone (its memory stays, shared).
    let helper: &'static Helper = Box::leak(Box::new(Helper {
        close,
        parent_gone: read_end,
    }));
    let stack: &'static mut [u8] = Box::leak(vec![0u8; STACK].into_boxed_slice());
    // SAFETY: the stack top is one past the end of a live, leaked buffer
    // (the stack grows down), aligned down to 16 bytes.
    let top = unsafe { stack.as_mut_ptr().add(STACK) };
    let top = (top as usize & !15) as *mut c_void;

    // The helper starts with every signal blocked: it must not run this
    // process's handlers (they use thread-local state it does not have).
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask reads `all`
    // and writes the previous mask into `old`.
    let blocked = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr())
    };
    if blocked != 0 {
        return Err(io::Error::from_raw_os_error(blocked));
    }
    // SAFETY: `helper_main` only makes async-signal-safe system calls on
    // data leaked above, on its own leaked stack; CLONE_VM shares this
    // address space so nothing is copied. SIGCHLD makes it an ordinary
    // child, reaped by whoever inherits it.
    let pid = unsafe {
        libc::clone(
            helper_main,
            top,
            libc::CLONE_VM | libc::SIGCHLD,
            helper as *const Helper as *mut c_void,
        )
    };
    let spawn_error = io::Error::last_os_error();
    // SAFETY: `old` was filled by the pthread_sigmask call above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut()) };
    // SAFETY: closing our copy of the pipe's read end; the helper has its own.
    unsafe { libc::close(read_end) };
    if pid < 0 {
        return Err(spawn_error);
    }
    Ok(())
}

/// Valgrind follows `fork` and `vfork` but stops the whole run at any other
/// `clone`, so under it (its preload library is in `LD_PRELOAD`) the VM is
/// closed at exit as usual.
fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|p| p.to_string_lossy().contains("vgpreload"))
}

/// The descriptors the helper closes at once: all but the KVM objects and
/// `keep`; `None` when there is no KVM object to hand off.
fn helper_closes(keep: c_int) -> io::Result<Option<Vec<c_int>>> {
    let mut kvm = 0;
    let mut close = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<c_int>().ok())
        else {
            continue;
        };
        if fd == keep {
            continue;
        }
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.to_string_lossy().starts_with("anon_inode:kvm") => kvm += 1,
            // Includes the directory being listed, already closed in the
            // helper's table by then (close fails harmlessly).
            _ => close.push(fd),
        }
    }
    Ok((kvm > 0).then_some(close))
}

/// The helper: close what is not KVM, wait for the parent's exit (EOF on
/// the pipe), exit. Raw system calls only.
extern "C" fn helper_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the leaked `Helper` passed by `hand_off`.
    let helper = unsafe { &*(arg as *const Helper) };
    for &fd in &helper.close {
        // SAFETY: closing a descriptor of the helper's own table.
        unsafe { libc::close(fd) };
    }
    let mut byte = 0u8;
    // SAFETY: a one-byte read into a local; every signal is blocked, so it
    // returns when the last write end (the parent's) is closed.
    unsafe { libc::read(helper.parent_gone, (&mut byte as *mut u8).cast(), 1) };
    // SAFETY: ends the helper without running any of the parent's
    // exit-time code; the kernel closes the KVM descriptors here.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_kvm_objects_starts_no_helper() {
        // This test binary holds no KVM object: nothing to hand off.
        assert!(hand_off().is_ok());
    }
}

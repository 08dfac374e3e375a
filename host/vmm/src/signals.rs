//! SIGINT/SIGTERM: ask the VM to stop cleanly instead of dying mid-exit.

use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::signal::register_signal_handler;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(num: c_int, _: *mut libc::siginfo_t, _: *mut c_void) {
    RECEIVED.store(num, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM into [`received`].
pub fn install() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        register_signal_handler(sig, on_signal).map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The stop signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}

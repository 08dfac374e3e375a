//! The built-in native 16550 UART (`--serial native`): the same device
//! the Wasm serial policy models, for guests and benchmarks that want the
//! console without a policy in the path.

use std::sync::{Arc, Mutex};

use wasmvisor_exit::{Completion, Direction, ExitEvent, ExitKind};
use wasmvisor_policy::ConsoleSink;

/// COM1.
pub const COM1: u16 = 0x3f8;

#[derive(Debug, Default)]
struct Regs {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
}

/// A transmit-only 16550 shared by all vCPUs.
#[derive(Clone)]
pub struct NativeSerial {
    regs: Arc<Mutex<Regs>>,
    console: Arc<dyn ConsoleSink>,
}

impl NativeSerial {
    /// A UART writing to `console`.
    pub fn new(console: Arc<dyn ConsoleSink>) -> NativeSerial {
        NativeSerial {
            regs: Arc::new(Mutex::new(Regs::default())),
            console,
        }
    }

    /// Answers a port access in `COM1..COM1+8`.
    pub fn handle(&self, event: &ExitEvent, completion: &mut Completion) {
        let ExitKind::Io(io) = event.kind else {
            return;
        };
        let offset = io.port.wrapping_sub(COM1);
        let byte = io.data as u8;
        // A poisoned lock only means another vCPU panicked mid-access; the
        // registers are plain bytes, so keep serving.
        let mut r = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        let dlab = r.lcr & 0x80 != 0;
        match io.direction {
            Direction::Write => match (offset, dlab) {
                (0, false) => self.console.write(&[byte]),
                (0, true) => r.dll = byte,
                (1, false) => r.ier = byte & 0x0f,
                (1, true) => r.dlm = byte,
                (3, _) => r.lcr = byte,
                (4, _) => r.mcr = byte,
                (7, _) => r.scr = byte,
                _ => {}
            },
            Direction::Read => {
                let value = match (offset, dlab) {
                    (0, false) => 0,
                    (0, true) => r.dll,
                    (1, false) => r.ier,
                    (1, true) => r.dlm,
                    (2, _) => 0x01,
                    (3, _) => r.lcr,
                    (4, _) => r.mcr,
                    (5, _) => 0x60,
                    (6, _) => 0xb0,
                    _ => r.scr,
                };
                completion.read = Some(u64::from(value));
            }
        }
    }
}

//! The built-in native 16550 UART (`--serial native`): the same device
//! the Wasm serial policy models, for guests and benchmarks that want the
//! console without a policy in the path.
//!
//! Transmit only: every byte written to THR goes out at once, so THR is
//! always empty. With an interrupt controller (Linux boots, `--irqchip`)
//! it raises IRQ 4 as a PC's COM1 does: the "THR empty" interrupt, when
//! enabled in IER, pending after a THR write or when enabled, cleared by
//! reading IIR, and gated by MCR OUT2.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use wasmvisor_exit::{Completion, Direction, ExitEvent, ExitKind, GpaRange, InterruptLines};
use wasmvisor_policy::ConsoleSink;

use crate::builtin::BuiltinDevice;

/// COM1.
pub const COM1: u16 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// IER bit 1: interrupt when THR is empty.
const IER_THRI: u8 = 0x02;
/// MCR bit 3: OUT2, which connects the UART's interrupt to the PIC on a PC.
const MCR_OUT2: u8 = 0x08;
/// IIR: no interrupt pending; THR empty pending.
const IIR_NONE: u8 = 0x01;
const IIR_THRI: u8 = 0x02;

#[derive(Debug, Default)]
struct Regs {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// The THR-empty interrupt is pending (not yet acknowledged).
    thre_pending: bool,
    /// The level the interrupt line was last set to.
    line: bool,
}

impl Regs {
    fn irq_level(&self) -> bool {
        self.ier & IER_THRI != 0 && self.thre_pending && self.mcr & MCR_OUT2 != 0
    }
}

/// A transmit-only 16550 shared by all vCPUs.
#[derive(Clone)]
pub struct NativeSerial {
    regs: Arc<Mutex<Regs>>,
    console: Arc<dyn ConsoleSink>,
    irq: Option<Arc<dyn InterruptLines>>,
}

impl NativeSerial {
    /// A UART writing to `console`, raising IRQ 4 through `irq` if given.
    pub fn new(console: Arc<dyn ConsoleSink>, irq: Option<Arc<dyn InterruptLines>>) -> Self {
        NativeSerial {
            regs: Arc::new(Mutex::new(Regs::default())),
            console,
            irq,
        }
    }
}

impl BuiltinDevice for NativeSerial {
    fn claims(&self) -> (Vec<RangeInclusive<u16>>, Vec<GpaRange>) {
        (vec![COM1..=COM1 + 7], Vec::new())
    }

    /// Answers a port access in `COM1..COM1+8`.
    fn handle(&self, event: &ExitEvent, completion: &mut Completion) {
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
                (0, false) => {
                    self.console.write(&[byte]);
                    r.thre_pending = true;
                }
                (0, true) => r.dll = byte,
                (1, false) => {
                    // Enabling the interrupt while THR is empty raises it.
                    if byte & IER_THRI != 0 && r.ier & IER_THRI == 0 {
                        r.thre_pending = true;
                    }
                    r.ier = byte & 0x0f;
                }
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
                    (2, _) if r.ier & IER_THRI != 0 && r.thre_pending => {
                        // Reading IIR acknowledges the THR-empty interrupt.
                        r.thre_pending = false;
                        IIR_THRI
                    }
                    (2, _) => IIR_NONE,
                    (3, _) => r.lcr,
                    (4, _) => r.mcr,
                    (5, _) => 0x60,
                    (6, _) => 0xb0,
                    _ => r.scr,
                };
                completion.read = Some(u64::from(value));
            }
        }
        let level = r.irq_level();
        if level != r.line {
            if let Some(irq) = &self.irq {
                // The line is KVM's; if setting it fails the guest just
                // misses an interrupt, and the console still works polled.
                if irq.set_level(COM1_IRQ, level).is_ok() {
                    r.line = level;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_exit::{IoExit, RecordedLines};

    struct Sink;
    impl ConsoleSink for Sink {
        fn write(&self, _bytes: &[u8]) {}
    }

    fn access(uart: &NativeSerial, offset: u16, direction: Direction, data: u8) -> Option<u64> {
        let event = ExitEvent {
            vcpu: 0,
            seq: 0,
            rip: 0,
            kind: ExitKind::Io(IoExit {
                port: COM1 + offset,
                size: 1,
                direction,
                data: u32::from(data),
            }),
        };
        let mut c = Completion::default();
        uart.handle(&event, &mut c);
        c.read
    }

    #[test]
    fn the_thr_empty_interrupt_follows_ier_iir_thr_and_out2() {
        let lines = Arc::new(RecordedLines::default());
        let uart = NativeSerial::new(Arc::new(Sink), Some(lines.clone()));
        let calls = || lines.calls.lock().unwrap().clone();
        // Enabled in IER but OUT2 off: pending, not on the line.
        access(&uart, 1, Direction::Write, IER_THRI);
        assert!(calls().is_empty());
        assert_eq!(
            access(&uart, 2, Direction::Read, 0),
            Some(u64::from(IIR_THRI))
        );
        // Acknowledged; OUT2 on: nothing pending, line stays low.
        access(&uart, 4, Direction::Write, MCR_OUT2);
        assert!(calls().is_empty());
        assert_eq!(
            access(&uart, 2, Direction::Read, 0),
            Some(u64::from(IIR_NONE))
        );
        // A byte sent: THR empty again, the line rises; IIR lowers it.
        access(&uart, 0, Direction::Write, b'x');
        assert_eq!(calls(), [(COM1_IRQ, true)]);
        assert_eq!(
            access(&uart, 2, Direction::Read, 0),
            Some(u64::from(IIR_THRI))
        );
        assert_eq!(calls(), [(COM1_IRQ, true), (COM1_IRQ, false)]);
        // Re-enabling while THR is empty raises it; disabling lowers it.
        access(&uart, 1, Direction::Write, 0);
        access(&uart, 1, Direction::Write, IER_THRI);
        access(&uart, 1, Direction::Write, 0);
        assert_eq!(
            calls()[2..],
            [(COM1_IRQ, true), (COM1_IRQ, false)],
            "{:?}",
            calls()
        );
    }

    #[test]
    fn without_an_interrupt_controller_the_uart_runs_polled() {
        let uart = NativeSerial::new(Arc::new(Sink), None);
        access(&uart, 4, Direction::Write, MCR_OUT2);
        access(&uart, 1, Direction::Write, IER_THRI);
        assert_eq!(
            access(&uart, 2, Direction::Read, 0),
            Some(u64::from(IIR_THRI))
        );
        assert_eq!(access(&uart, 5, Direction::Read, 0), Some(0x60));
    }
}

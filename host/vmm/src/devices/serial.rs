//! The built-in 16550 UART, the default console (`--serial native`): the
//! same register model as the Wasm serial policy (`wasmvisor-uart16550`),
//! for guests and benchmarks that want the console without a policy in
//! the path.
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
use wasmvisor_uart16550::Uart16550;

use crate::devices::builtin::BuiltinDevice;

/// COM1.
pub const COM1: u16 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// The registers (the model the serial policy shares) and the level the
/// interrupt line was last set to.
#[derive(Debug, Default)]
struct Regs {
    uart: Uart16550,
    line: bool,
}

/// A transmit-only 16550 shared by all vCPUs.
#[derive(Clone)]
pub struct Uart {
    regs: Arc<Mutex<Regs>>,
    console: Arc<dyn ConsoleSink>,
    irq: Option<Arc<dyn InterruptLines>>,
}

impl Uart {
    /// A UART writing to `console`, raising IRQ 4 through `irq` if given.
    pub fn new(console: Arc<dyn ConsoleSink>, irq: Option<Arc<dyn InterruptLines>>) -> Self {
        Uart {
            regs: Arc::new(Mutex::new(Regs::default())),
            console,
            irq,
        }
    }
}

impl BuiltinDevice for Uart {
    fn claims(&self) -> (Vec<RangeInclusive<u16>>, Vec<GpaRange>) {
        (vec![COM1..=COM1 + 7], Vec::new())
    }

    /// Answers a port access in `COM1..COM1+8`.
    fn handle(&self, event: &ExitEvent, completion: &mut Completion) {
        let ExitKind::Io(io) = event.kind else {
            return;
        };
        let offset = io.port.wrapping_sub(COM1);
        // A poisoned lock only means another vCPU panicked mid-access; the
        // registers are plain bytes, so keep serving.
        let mut r = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        match io.direction {
            Direction::Write => {
                if let Some(byte) = r.uart.write(offset, io.data as u8) {
                    self.console.write(&[byte]);
                }
            }
            Direction::Read => completion.read = Some(u64::from(r.uart.read(offset))),
        }
        let level = r.uart.irq_level();
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

    fn save(&self) -> Option<(&'static str, Vec<u8>)> {
        let regs = self
            .regs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut bytes = regs.uart.to_bytes().to_vec();
        bytes.push(u8::from(regs.line));
        Some(("uart-com1", bytes))
    }

    fn restore(&self, state: &[u8]) -> Result<(), String> {
        let bad = || format!("UART state of {} bytes is malformed", state.len());
        let (line, uart) = state.split_last().ok_or_else(bad)?;
        let uart = Uart16550::from_bytes(uart).ok_or_else(bad)?;
        let mut regs = self
            .regs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        regs.uart = uart;
        regs.line = *line != 0;
        // The in-kernel irqchip's state, restored with the VM's, already
        // holds the line at this level.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_exit::{IoExit, RecordedLines};
    use wasmvisor_uart16550::{IER_THRI, IIR_NONE, IIR_THRI, MCR_OUT2};

    struct Sink;
    impl ConsoleSink for Sink {
        fn write(&self, _bytes: &[u8]) {}
    }

    fn access(uart: &Uart, offset: u16, direction: Direction, data: u8) -> Option<u64> {
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
        let uart = Uart::new(Arc::new(Sink), Some(lines.clone()));
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
        let uart = Uart::new(Arc::new(Sink), None);
        access(&uart, 4, Direction::Write, MCR_OUT2);
        access(&uart, 1, Direction::Write, IER_THRI);
        assert_eq!(
            access(&uart, 2, Direction::Read, 0),
            Some(u64::from(IIR_THRI))
        );
        assert_eq!(access(&uart, 5, Direction::Read, 0), Some(0x60));
    }
}

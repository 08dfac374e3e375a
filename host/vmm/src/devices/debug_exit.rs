//! QEMU's isa-debug-exit, for guests written to end a run by writing a
//! port (`--device debug-exit[=PORT]`, off by default): a write of V ends
//! the run with exit code (V << 1) | 1, as in QEMU, so test guests and
//! kernels built for `qemu -device isa-debug-exit,iobase=0xf4,iosize=4`
//! run unchanged. Reads answer 0.

use std::ops::RangeInclusive;

use wasmvisor_exit::{Completion, Direction, ExitEvent, ExitKind, GpaRange};

use crate::devices::builtin::{reads_zero, BuiltinDevice};
use crate::outcome::VmOutcome;

/// Ports the device answers from its base, as QEMU's `iosize=4`.
pub const PORTS: u16 = 4;

/// The device at one port.
#[derive(Debug)]
pub struct DebugExit {
    port: u16,
}

impl DebugExit {
    /// The device at `port..port + 4`; the caller checks it fits.
    pub fn new(port: u16) -> DebugExit {
        DebugExit { port }
    }
}

impl BuiltinDevice for DebugExit {
    fn claims(&self) -> (Vec<RangeInclusive<u16>>, Vec<GpaRange>) {
        (vec![self.port..=self.port + (PORTS - 1)], Vec::new())
    }

    fn handle(&self, event: &ExitEvent, completion: &mut Completion) {
        reads_zero(event, completion);
    }

    fn ends_run(&self, event: &ExitEvent) -> Option<VmOutcome> {
        match event.kind {
            ExitKind::Io(io) if io.direction == Direction::Write => Some(VmOutcome::DebugExit {
                port: io.port,
                value: io.data,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_exit::testing::io_exit;

    fn io(port: u16, size: u8, direction: Direction, data: u32) -> ExitEvent {
        io_exit(port, size, direction, data)
    }

    #[test]
    fn a_write_ends_the_run_with_qemus_exit_code() {
        let dev = DebugExit::new(0xf4);
        assert_eq!(dev.claims().0, vec![0xf4..=0xf7]);
        let out = dev.ends_run(&io(0xf4, 1, Direction::Write, 0x10)).unwrap();
        assert_eq!(out.exit_code(), 0x21);
        let out = dev.ends_run(&io(0xf4, 4, Direction::Write, 0)).unwrap();
        assert_eq!(out.exit_code(), 1, "0 exits with 1, as in QEMU");
        // The shell sees the low 8 bits, as of QEMU's exit().
        let out = dev.ends_run(&io(0xf4, 4, Direction::Write, 0x80)).unwrap();
        assert_eq!(out.exit_code(), 1);
        assert!(out.describe().contains("0x80"), "{}", out.describe());
    }

    #[test]
    fn reads_answer_zero_and_go_on() {
        let dev = DebugExit::new(0x501);
        let e = io(0x501, 2, Direction::Read, 0);
        assert_eq!(dev.ends_run(&e), None);
        let mut c = Completion::default();
        dev.handle(&e, &mut c);
        assert_eq!(c.read, Some(0));
    }
}

//! The PC keyboard controller's one feature a VM needs: the reset line.
//! `reboot=k` in a Linux command line (and many other guests) reset the
//! machine by writing 0xfe, "pulse the reset line", to the command port
//! 0x64. wasmvisor ends the run cleanly when that happens.
//!
//! There is no keyboard: the status port reads 0 (both buffers empty) and
//! the data port reads 0, so a kernel probing for a controller finds one
//! that never has input. It is a built-in device like the others, present
//! in every VM, so a policy that claims 0x60 or 0x64 answers first.

use std::ops::RangeInclusive;

use wasmvisor_exit::{Completion, Direction, ExitEvent, ExitKind, GpaRange};

use crate::devices::builtin::{reads_zero, BuiltinDevice};
use crate::outcome::VmOutcome;

/// The data port.
pub const DATA: u16 = 0x60;
/// The status (read) and command (write) port.
pub const COMMAND: u16 = 0x64;
/// The command that pulses the CPU reset line.
const RESET: u8 = 0xfe;

/// The keyboard controller as a built-in device.
#[derive(Debug, Default)]
pub struct I8042;

impl BuiltinDevice for I8042 {
    fn claims(&self) -> (Vec<RangeInclusive<u16>>, Vec<GpaRange>) {
        (vec![DATA..=DATA, COMMAND..=COMMAND], Vec::new())
    }

    fn handle(&self, event: &ExitEvent, completion: &mut Completion) {
        reads_zero(event, completion);
    }

    fn ends_run(&self, event: &ExitEvent) -> Option<VmOutcome> {
        match event.kind {
            ExitKind::Io(io)
                if io.direction == Direction::Write
                    && io.port == COMMAND
                    && io.data as u8 == RESET =>
            {
                Some(VmOutcome::Reset)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_exit::testing::io_exit;

    fn io(port: u16, direction: Direction, data: u32) -> ExitEvent {
        io_exit(port, 1, direction, data)
    }

    #[test]
    fn only_the_reset_command_resets() {
        let dev = I8042;
        let resets = |e: &ExitEvent| dev.ends_run(e) == Some(VmOutcome::Reset);
        assert!(resets(&io(COMMAND, Direction::Write, 0xfe)));
        assert!(!resets(&io(COMMAND, Direction::Write, 0xd1)));
        assert!(!resets(&io(DATA, Direction::Write, 0xfe)));
        assert!(!resets(&io(COMMAND, Direction::Read, 0)));
        let mut c = Completion::default();
        dev.handle(&io(COMMAND, Direction::Read, 0), &mut c);
        assert_eq!(c.read, Some(0), "status: no input, no output");
    }
}

//! The PC keyboard controller's one feature a VM needs: the reset line.
//! `reboot=k` in a Linux command line (and many other guests) reset the
//! machine by writing 0xfe, "pulse the reset line", to the command port
//! 0x64. wasmvisor ends the run cleanly when that happens.
//!
//! There is no keyboard: the status port reads 0 (both buffers empty) and
//! the data port reads 0, so a kernel probing for a controller finds one
//! that never has input.

use wasmvisor_exit::{Completion, Direction, ExitEvent, ExitKind};

/// The data port.
pub const DATA: u16 = 0x60;
/// The status (read) and command (write) port.
pub const COMMAND: u16 = 0x64;
/// The command that pulses the CPU reset line.
const RESET: u8 = 0xfe;

/// Answers an access to 0x60 or 0x64; true if the guest asked for a reset.
pub fn handle(event: &ExitEvent, completion: &mut Completion) -> bool {
    let ExitKind::Io(io) = event.kind else {
        return false;
    };
    match io.direction {
        Direction::Read => {
            completion.read = Some(0);
            false
        }
        Direction::Write => io.port == COMMAND && io.data as u8 == RESET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_exit::IoExit;

    fn io(port: u16, direction: Direction, data: u32) -> ExitEvent {
        ExitEvent {
            vcpu: 0,
            seq: 0,
            rip: 0,
            kind: ExitKind::Io(IoExit {
                port,
                size: 1,
                direction,
                data,
            }),
        }
    }

    #[test]
    fn only_the_reset_command_resets() {
        let mut c = Completion::default();
        assert!(handle(&io(COMMAND, Direction::Write, 0xfe), &mut c));
        assert!(!handle(&io(COMMAND, Direction::Write, 0xd1), &mut c));
        assert!(!handle(&io(DATA, Direction::Write, 0xfe), &mut c));
        assert!(!handle(&io(COMMAND, Direction::Read, 0), &mut c));
        assert_eq!(c.read, Some(0), "status: no input, no output");
    }
}

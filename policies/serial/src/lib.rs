//! A 16550 UART on eight ports; what the guest transmits goes to the VM
//! console. There is no input: the receiver is always empty.
//!
//! Its interrupt (`irq`, default 4) is the "THR empty" interrupt, as a PC's
//! COM1 raises it: enabled in IER, pending after a THR write or when
//! enabled (THR is always empty), acknowledged by reading IIR, gated by
//! MCR OUT2. The policy drives the line with the `set-irq-line` import,
//! which the operator grants with `@irq=4`; without the grant, or in a VM
//! without an interrupt controller, the UART runs polled and says so once.
//!
//! Each vCPU's instance has its own copy of the registers: a guest that
//! programs the UART on one vCPU and writes to it from another sees the
//! registers of the vCPU it is on.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::{
    export_policy, host, Config, Direction, Exit, HostError, IoExit, Policy, Subscriptions, Verdict,
};
use wasmvisor_uart16550::Uart16550 as Uart;

struct Serial {
    base: u16,
    uart: Uart,
    /// The interrupt line, while the host lets the policy drive it.
    irq: Option<u32>,
    /// The level the line was last set to.
    line: bool,
}

impl Serial {
    /// Moves the interrupt line to the UART's level if it changed. A
    /// refusal turns interrupts off for this instance, with one warning.
    fn update_irq(&mut self) {
        let level = self.uart.irq_level();
        let Some(line) = self.irq.filter(|_| level != self.line) else {
            return;
        };
        match host::set_irq_line(line, level) {
            Ok(()) => self.line = level,
            Err(e) => {
                self.irq = None;
                let why = match e {
                    HostError::NotGranted => "not granted (add @irq=LINE to the policy)",
                    HostError::Unsupported => "unsupported: the VM has no interrupt controller",
                    _ => "refused",
                };
                host::warn(&format!(
                    "serial: interrupt line {line} {why}; running polled"
                ));
            }
        }
    }
}

impl Policy for Serial {
    const NAME: &'static str = "serial";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "16550 UART whose output goes to the VM console";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["port", "irq"])?;
        let base = config.u16("port")?.unwrap_or(0x3f8);
        let irq = match config.get("irq") {
            None => Some(4),
            Some("none") => None,
            Some(_) => Some(config.u32("irq")?.unwrap_or(4)),
        };
        let last = base
            .checked_add(7)
            .ok_or_else(|| format!("config key `port`: {base:#x}+7 is above 0xffff"))?;
        let serial = Serial {
            base,
            uart: Uart::default(),
            irq,
            line: false,
        };
        Ok((serial, Subscriptions::new().ports(base, last)))
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        let offset = io.port.wrapping_sub(self.base);
        if offset > 7 {
            return Verdict::Decline;
        }
        let verdict = match io.direction {
            Direction::Read => Verdict::complete(self.uart.read(offset).into()),
            Direction::Write => {
                if let Some(byte) = self.uart.write(offset, io.data as u8) {
                    host::console_write(&[byte]);
                }
                Verdict::resume()
            }
        };
        self.update_irq();
        verdict
    }
}

export_policy!(Serial);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_uart16550::{IER_THRI, IIR_NONE, IIR_THRI, MCR_OUT2};

    #[test]
    fn idle_status_registers() {
        let mut u = Uart::default();
        assert_eq!(u.read(0), 0);
        assert_eq!(u.read(2), 0x01);
        assert_eq!(u.read(5), 0x60);
        assert_eq!(u.read(6), 0xb0);
    }

    #[test]
    fn registers_read_back() {
        let mut u = Uart::default();
        assert_eq!(u.write(7, 0x5a), None);
        assert_eq!(u.read(7), 0x5a);
        u.write(1, 0xff);
        assert_eq!(u.read(1), 0x0f);
        u.write(3, 0x03);
        assert_eq!(u.read(3), 0x03);
        u.write(4, 0x0b);
        assert_eq!(u.read(4), 0x0b);
        u.write(5, 0);
        assert_eq!(u.read(5), 0x60);
    }

    #[test]
    fn thr_transmits_unless_dlab() {
        let mut u = Uart::default();
        assert_eq!(u.write(0, b'A'), Some(b'A'));
        u.write(3, 0x83);
        assert_eq!(u.write(0, 0x01), None);
        assert_eq!(u.write(1, 0x02), None);
        assert_eq!((u.read(0), u.read(1)), (0x01, 0x02));
        u.write(3, 0x03);
        assert_eq!((u.read(0), u.read(1)), (0, 0));
        assert_eq!(u.write(0, b'B'), Some(b'B'));
    }

    #[test]
    fn loopback_reflects_mcr() {
        let mut u = Uart::default();
        u.write(4, 0x1a);
        assert_eq!(u.read(6), 0x90);
        u.write(4, 0x1f);
        assert_eq!(u.read(6), 0xf0);
    }

    #[test]
    fn the_thr_empty_interrupt_follows_ier_iir_thr_and_out2() {
        let mut u = Uart::default();
        u.write(1, IER_THRI);
        assert!(!u.irq_level(), "OUT2 off");
        u.write(4, MCR_OUT2);
        assert!(u.irq_level());
        assert_eq!(u.read(2), IIR_THRI);
        assert!(!u.irq_level(), "acknowledged");
        assert_eq!(u.read(2), IIR_NONE);
        u.write(0, b'x');
        assert!(u.irq_level(), "THR empty again");
        u.write(1, 0);
        assert!(!u.irq_level(), "disabled");
    }

    #[test]
    fn the_interrupt_line_is_configurable() {
        let (s, _) = Serial::init(&Config::default()).unwrap();
        assert_eq!(s.irq, Some(4));
        let (s, _) = Serial::init(&Config::from_pairs([("irq", "3")])).unwrap();
        assert_eq!(s.irq, Some(3));
        let (s, _) = Serial::init(&Config::from_pairs([("irq", "none")])).unwrap();
        assert_eq!(s.irq, None);
        assert!(Serial::init(&Config::from_pairs([("irq", "com")])).is_err());
    }

    #[test]
    fn config() {
        let (s, subs) = Serial::init(&Config::default()).unwrap();
        assert_eq!(s.base, 0x3f8);
        assert_eq!((subs.ports[0].first, subs.ports[0].last), (0x3f8, 0x3ff));
        let (s, _) = Serial::init(&Config::from_pairs([("port", "0x2f8")])).unwrap();
        assert_eq!(s.base, 0x2f8);
        assert!(Serial::init(&Config::from_pairs([("port", "0xfffc")])).is_err());
        assert_eq!(
            Serial::init(&Config::from_pairs([("baud", "9600")])).err(),
            Some("unknown config key `baud`".to_string())
        );
    }

    #[test]
    fn reads_complete_and_foreign_ports_decline() {
        let (mut s, _) = Serial::init(&Config::default()).unwrap();
        let ev = Exit {
            vcpu: 0,
            seq: 0,
            rip: 0,
        };
        let io = |port, direction, data| IoExit {
            port,
            size: 1,
            direction,
            data,
        };
        assert_eq!(
            s.on_io(&ev, io(0x3fd, Direction::Read, 0)),
            Verdict::complete(0x60)
        );
        assert_eq!(
            s.on_io(&ev, io(0x3ff, Direction::Write, 9)),
            Verdict::resume()
        );
        assert_eq!(
            s.on_io(&ev, io(0x3ff, Direction::Read, 0)),
            Verdict::complete(9)
        );
        assert!(s.on_io(&ev, io(0x3f7, Direction::Read, 0)).is_decline());
    }
}

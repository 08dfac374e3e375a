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

use wasmvisor_policy_sdk::{
    export_policy, host, Config, Direction, Exit, HostError, IoExit, Policy, Subscriptions, Verdict,
};

/// LCR bit 7: the divisor latch is mapped at offsets 0 and 1.
const LCR_DLAB: u8 = 0x80;
/// MCR bit 4: loopback, the modem outputs drive the modem inputs.
const MCR_LOOP: u8 = 0x10;
/// IIR: no interrupt pending; THR empty pending.
const IIR_NONE: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
/// IER bit 1: interrupt when THR is empty.
const IER_THRI: u8 = 0x02;
/// MCR bit 3: OUT2, which connects the interrupt to the PIC on a PC.
const MCR_OUT2: u8 = 0x08;
/// LSR: transmit holding register empty, transmitter empty.
const LSR_IDLE: u8 = 0x60;
/// MSR: carrier detect, data set ready, clear to send.
const MSR_IDLE: u8 = 0xb0;

/// The UART's registers (one copy per vCPU instance).
#[derive(Debug, Default)]
struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// The THR-empty interrupt is pending (not yet acknowledged).
    thre_pending: bool,
}

impl Uart {
    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// The level of the interrupt output.
    fn irq_level(&self) -> bool {
        self.ier & IER_THRI != 0 && self.thre_pending && self.mcr & MCR_OUT2 != 0
    }

    /// The value a read of register `offset` returns.
    fn read(&mut self, offset: u16) -> u8 {
        match offset {
            0 if self.dlab() => self.dll,
            0 => 0, // RBR: nothing received
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            2 if self.ier & IER_THRI != 0 && self.thre_pending => {
                // Reading IIR acknowledges the THR-empty interrupt.
                self.thre_pending = false;
                IIR_THRI
            }
            2 => IIR_NONE,
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_IDLE,
            6 if self.mcr & MCR_LOOP != 0 => self.loopback_msr(),
            6 => MSR_IDLE,
            _ => self.scr,
        }
    }

    /// Stores a write of `value` to register `offset`; returns the byte to
    /// transmit for a THR write.
    fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
        match offset {
            0 if self.dlab() => self.dll = value,
            0 => {
                self.thre_pending = true;
                return Some(value);
            }
            1 if self.dlab() => self.dlm = value,
            1 => {
                // Enabling the interrupt while THR is empty raises it.
                if value & IER_THRI != 0 && self.ier & IER_THRI == 0 {
                    self.thre_pending = true;
                }
                self.ier = value & 0x0f;
            }
            2 => {} // FCR: the FIFOs are not modelled
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            5 | 6 => {} // LSR and MSR are read-only
            _ => self.scr = value,
        }
        None
    }

    /// MSR in loopback mode: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
    fn loopback_msr(&self) -> u8 {
        let m = self.mcr;
        ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
    }
}

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

//! The registers of a 16550 UART as a PC's COM1 presents them, transmit
//! only: what a guest writes to THR goes out at once, so THR is always
//! empty, and nothing is ever received. One model for both consoles that
//! wasmvisor has, the built-in UART (`host/vmm`) and the Wasm serial
//! policy (`policies/serial`), so that a guest sees the same device
//! whichever answers (they used to be two copies, and had drifted: only
//! one modelled loopback).
//!
//! The interrupt is the "THR empty" interrupt: enabled in IER, pending
//! after a THR write or when it is enabled (THR being empty), acknowledged
//! by reading IIR, and connected to the interrupt controller by MCR OUT2.
//! [`Uart16550::irq_level`] is the level of the output; the caller drives
//! its line.
#![forbid(unsafe_code)]

/// LCR bit 7: the divisor latch is mapped at offsets 0 and 1.
pub const LCR_DLAB: u8 = 0x80;
/// MCR bit 4: loopback, the modem outputs drive the modem inputs.
pub const MCR_LOOP: u8 = 0x10;
/// IIR: no interrupt pending; THR empty pending.
pub const IIR_NONE: u8 = 0x01;
pub const IIR_THRI: u8 = 0x02;
/// IER bit 1: interrupt when THR is empty.
pub const IER_THRI: u8 = 0x02;
/// MCR bit 3: OUT2, which connects the interrupt to the PIC on a PC.
pub const MCR_OUT2: u8 = 0x08;
/// LSR: transmit holding register empty, transmitter empty.
pub const LSR_IDLE: u8 = 0x60;
/// MSR: carrier detect, data set ready, clear to send.
pub const MSR_IDLE: u8 = 0xb0;

/// The UART's registers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// The THR-empty interrupt is pending (not yet acknowledged).
    thre_pending: bool,
}

/// Bytes in [`Uart16550::to_bytes`].
pub const STATE_BYTES: usize = 7;

impl Uart16550 {
    /// The registers as bytes, for a snapshot: IER, LCR, MCR, SCR, DLL,
    /// DLM, and 1 if the THR-empty interrupt is pending.
    pub fn to_bytes(&self) -> [u8; STATE_BYTES] {
        [
            self.ier,
            self.lcr,
            self.mcr,
            self.scr,
            self.dll,
            self.dlm,
            u8::from(self.thre_pending),
        ]
    }

    /// The registers [`Uart16550::to_bytes`] wrote; `None` for any other
    /// length or a pending flag other than 0 or 1.
    pub fn from_bytes(b: &[u8]) -> Option<Uart16550> {
        let &[ier, lcr, mcr, scr, dll, dlm, pending] = b else {
            return None;
        };
        Some(Uart16550 {
            ier,
            lcr,
            mcr,
            scr,
            dll,
            dlm,
            thre_pending: match pending {
                0 => false,
                1 => true,
                _ => return None,
            },
        })
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// The level of the interrupt output.
    pub fn irq_level(&self) -> bool {
        self.ier & IER_THRI != 0 && self.thre_pending && self.mcr & MCR_OUT2 != 0
    }

    /// The value a read of register `offset` returns.
    pub fn read(&mut self, offset: u16) -> u8 {
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
    pub fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thr_empty_interrupt_follows_ier_iir_thr_and_out2() {
        let mut u = Uart16550::default();
        u.write(1, IER_THRI);
        assert!(!u.irq_level(), "OUT2 off: pending but not on the line");
        assert_eq!(u.read(2), IIR_THRI);
        assert_eq!(u.read(2), IIR_NONE, "reading IIR acknowledged it");
        u.write(4, MCR_OUT2);
        assert_eq!(u.write(0, b'x'), Some(b'x'));
        assert!(u.irq_level());
        assert_eq!(u.read(2), IIR_THRI);
        assert!(!u.irq_level());
    }

    #[test]
    fn divisor_latch_scratch_and_idle_status() {
        let mut u = Uart16550::default();
        u.write(3, LCR_DLAB);
        assert_eq!(u.write(0, 0x0c), None, "DLL, not THR");
        u.write(1, 0x00);
        assert_eq!((u.read(0), u.read(1)), (0x0c, 0));
        u.write(3, 0x03);
        u.write(7, 0x5a);
        assert_eq!(u.read(7), 0x5a);
        assert_eq!((u.read(5), u.read(6)), (LSR_IDLE, MSR_IDLE));
    }

    #[test]
    fn loopback_drives_the_modem_inputs() {
        let mut u = Uart16550::default();
        u.write(4, MCR_LOOP | 0x0f);
        assert_eq!(u.read(6), 0xf0);
        u.write(4, MCR_LOOP);
        assert_eq!(u.read(6), 0x00);
    }
}

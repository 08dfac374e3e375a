//! The seams between the bus, its devices and the VMM: [`PciDevice`],
//! which emulated and passthrough devices both implement, and the two
//! services a device uses, [`InterruptSink`] and [`DmaMemory`].

use std::sync::{Mutex, PoisonError};

use thiserror::Error;

use crate::bar::BarRegion;
use crate::msi::MsiMessage;

/// A PCI function on the bus.
///
/// The bus hands every access over as an offset and a size, after
/// decoding it: configuration accesses of 1, 2 or 4 bytes at any offset
/// below 4096 (not crossing a dword), and BAR accesses of 1, 2, 4 or 8
/// bytes that lie inside the BAR. An emulated device answers from its own
/// state; a passthrough device forwards to the real one (VFIO or
/// vfio-user region reads and writes), virtualizing what the guest must
/// not see. Accesses take `&mut self` because reads can have side effects
/// on real devices.
pub trait PciDevice: Send {
    /// A guest read of `size` bytes at `offset` of the configuration
    /// space, little-endian in the low bytes.
    fn config_read(&mut self, offset: u16, size: u8) -> u32;

    /// A guest write of the low `size` bytes of `value` at `offset`.
    fn config_write(&mut self, offset: u16, size: u8, value: u32);

    /// The BARs the device declares, with the addresses now programmed in
    /// them. The bus routes accesses from these and the command register.
    fn bar_regions(&self) -> Vec<BarRegion>;

    /// A guest read of `size` bytes at `offset` inside BAR `bar`.
    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64;

    /// A guest write of the low `size` bytes of `value` at `offset`
    /// inside BAR `bar`.
    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64);

    /// Puts the device back in its power-on state: registers, pending
    /// interrupts (a raised INTx is lowered) and any work in flight.
    fn reset(&mut self);

    /// Parts of BARs backed by memory the VMM has mapped and shares with
    /// the device, which the VMM may map into the guest instead of
    /// trapping each access (passthrough BARs). None by default: every
    /// access comes through [`PciDevice::bar_read`] and
    /// [`PciDevice::bar_write`].
    fn direct_maps(&self) -> Vec<DirectMap> {
        Vec::new()
    }
}

/// A part of a BAR that can be mapped into the guest: `size` bytes at
/// `offset` in BAR `bar` are the VMM's memory at `host_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirectMap {
    /// The BAR index.
    pub bar: u8,
    /// Where the part starts in the BAR, page-aligned.
    pub offset: u64,
    /// Bytes, whole pages.
    pub size: u64,
    /// Where the VMM has it mapped.
    pub host_addr: u64,
}

/// A [`DirectMap`] where the guest has placed it, as the VMM maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestMapping {
    /// The guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
    /// The VMM's address of the first byte.
    pub host_addr: u64,
}

/// Where a device's interrupts go. The VMM implements it per device: MSI
/// messages through KVM (`KVM_SIGNAL_MSI` or an irqfd with an MSI route),
/// INTx as the level of the interrupt controller input the device's pin
/// is wired to.
pub trait InterruptSink: Send + Sync {
    /// Delivers an MSI message: the write the device would make.
    fn send_msi(&self, message: MsiMessage) -> Result<(), InterruptError>;

    /// Sets the device's INTx line: `true` asserts it, `false` releases
    /// it. The line is level-triggered, so it stays asserted until the
    /// device releases it.
    fn set_intx(&self, asserted: bool) -> Result<(), InterruptError>;
}

/// An interrupt the sink could not deliver.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot deliver the interrupt: {reason}")]
pub struct InterruptError {
    /// Why, in the words of whoever failed (KVM, usually).
    pub reason: String,
}

/// One interrupt a device signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// An MSI message.
    Msi(MsiMessage),
    /// The INTx line's new level.
    Intx(bool),
}

/// An interrupt sink that records what it is given, for tests of devices
/// here and in the VMM.
#[derive(Debug, Default)]
pub struct RecordedInterrupts {
    log: Mutex<Vec<Interrupt>>,
}

impl RecordedInterrupts {
    /// Everything delivered so far, in order; the log is emptied.
    pub fn take(&self) -> Vec<Interrupt> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, interrupt: Interrupt) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(interrupt);
    }
}

impl InterruptSink for RecordedInterrupts {
    fn send_msi(&self, message: MsiMessage) -> Result<(), InterruptError> {
        self.push(Interrupt::Msi(message));
        Ok(())
    }

    fn set_intx(&self, asserted: bool) -> Result<(), InterruptError> {
        self.push(Interrupt::Intx(asserted));
        Ok(())
    }
}

/// Guest memory as a device's DMA sees it: guest-physical addresses, as
/// the IOMMU maps them for passthrough (IOVA = GPA). The VMM implements it
/// over guest RAM, and may refuse ranges a policy does not allow.
pub trait DmaMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError>;

    /// Writes `buf` at `gpa`.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), DmaError>;
}

/// A DMA that did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DmaError {
    /// Part of the range is not guest RAM.
    #[error("DMA of {len} bytes at {gpa:#x} is outside guest memory")]
    OutOfRange {
        /// Where the access starts.
        gpa: u64,
        /// Its length.
        len: usize,
    },
    /// The VMM or a policy refused the access.
    #[error("DMA of {len} bytes at {gpa:#x} was refused: {reason}")]
    Refused {
        /// Where the access starts.
        gpa: u64,
        /// Its length.
        len: usize,
        /// Who refused it and why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_interrupts_come_back_in_order_once() {
        let sink = RecordedInterrupts::default();
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        sink.set_intx(true).unwrap();
        sink.send_msi(m).unwrap();
        assert_eq!(sink.take(), [Interrupt::Intx(true), Interrupt::Msi(m)]);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn errors_say_what_failed() {
        let e = DmaError::OutOfRange {
            gpa: 0x1000,
            len: 16,
        };
        assert_eq!(
            e.to_string(),
            "DMA of 16 bytes at 0x1000 is outside guest memory"
        );
        let e = InterruptError {
            reason: "KVM_SIGNAL_MSI failed: EINVAL".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot deliver the interrupt: KVM_SIGNAL_MSI failed: EINVAL"
        );
    }
}

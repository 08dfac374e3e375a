//! A small emulated PCI device for tests and example guests: it exercises
//! enumeration, BAR sizing and mapping, MSI and INTx, and DMA, where no
//! real device exists.
//!
//! Identity: vendor [`VENDOR_ID`] (0x5741), device [`TEST_DEVICE_ID`],
//! class 0xFF ("unclassified"), INTA#, an MSI capability with 4
//! vectors, 64-bit addresses and per-vector masking, and an MSI-X
//! capability with 2 vectors whose table is at 0x800 in BAR 0 and PBA at
//! 0xC00.
//!
//! BAR 0 is 4 KiB of 32-bit registers, little-endian:
//!
//! | offset | register | access |
//! |---|---|---|
//! | 0x00 | ID: "WVTD" (0x4454_5657) | read |
//! | 0x04 | SCRATCH | read, write |
//! | 0x08 | DOORBELL: writing N raises MSI-X vector N if MSI-X is on, else MSI vector N, or INTx while both are off | write (reads 0) |
//! | 0x0C | IRQ_STATUS: bit 0 = INTx raised by the doorbell; write 1 to clear and lower INTx | read, write 1 to clear |
//! | 0x10, 0x14 | DMA_ADDR low and high: guest-physical address | read, write |
//! | 0x18 | DMA_LEN: bytes, 1 to 64 KiB | read, write |
//! | 0x1C | DMA_CMD: 1 = FILL (write the pattern `dma_pattern(i)` to the buffer), 2 = SUM (add up the buffer's bytes into DMA_RESULT) | write (reads 0) |
//! | 0x20 | DMA_STATUS: 0 idle, 1 done, 0x81 bus mastering off, 0x82 bad length, 0x83 memory error, 0x84 unknown command | read |
//! | 0x24 | DMA_RESULT: bytes written (FILL) or their sum (SUM) | read |
//!
//! Registers answer naturally aligned reads of 1, 2 or 4 bytes and 8-byte
//! reads and writes at 8-byte boundaries (DMA_ADDR as one 64-bit value);
//! writes must be whole registers. DMA runs to completion inside the
//! DMA_CMD write, so DMA_STATUS is final when the guest next reads it. DMA
//! and MSI are memory writes by the device, so both need the command
//! register's bus master bit; a doorbell rung without it is lost.

use std::sync::Arc;

use crate::all_ones;
use crate::bar::{Bar, BarRegion};
use crate::capability::{MsiConfig, MsixConfig};
use crate::config::{ClassCode, ConfigSpace, Header, IntxPin};
use crate::device::{DmaMemory, InterruptSink, PciDevice};
use crate::msi::{Msi, MsiMessage, MsiSignal};
use crate::msix::{Msix, MsixEmulation};
use crate::VENDOR_ID;

/// The test device's device ID (under [`VENDOR_ID`]).
pub const TEST_DEVICE_ID: u16 = 0x0002;

/// Byte `i` of what a FILL writes: a pattern that differs from zeroed
/// memory and from the offset, so a guest can check every byte landed.
pub fn dma_pattern(i: usize) -> u8 {
    0xa5 ^ i as u8
}

/// IRQ_STATUS bit 0: the doorbell raised INTx.
const IRQ_DOORBELL: u32 = 1;

/// The registers that are not in configuration space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Regs {
    scratch: u32,
    irq_status: u32,
    dma_addr: u64,
    dma_len: u32,
    dma_status: u32,
    dma_result: u32,
}

/// The emulated test device; see the module documentation for its
/// registers.
pub struct TestDevice {
    config: ConfigSpace,
    msi: Msi,
    msix: MsixEmulation,
    regs: Regs,
    /// The INTx level last given to the sink.
    intx: bool,
    dma: Arc<dyn DmaMemory>,
    interrupts: Option<Arc<dyn InterruptSink>>,
}

impl TestDevice {
    /// BAR 0's size.
    pub const BAR_SIZE: u64 = 0x1000;
    /// The ID register.
    pub const ID: u64 = 0x00;
    /// The scratch register.
    pub const SCRATCH: u64 = 0x04;
    /// The doorbell register.
    pub const DOORBELL: u64 = 0x08;
    /// The interrupt status register.
    pub const IRQ_STATUS: u64 = 0x0c;
    /// The DMA address, low half.
    pub const DMA_ADDR_LO: u64 = 0x10;
    /// The DMA address, high half.
    pub const DMA_ADDR_HI: u64 = 0x14;
    /// The DMA length.
    pub const DMA_LEN: u64 = 0x18;
    /// The DMA command register.
    pub const DMA_CMD: u64 = 0x1c;
    /// The DMA status register.
    pub const DMA_STATUS: u64 = 0x20;
    /// The DMA result register.
    pub const DMA_RESULT: u64 = 0x24;

    /// What the ID register reads: "WVTD".
    pub const ID_VALUE: u32 = u32::from_le_bytes(*b"WVTD");
    /// DMA_CMD: fill the buffer with the pattern.
    pub const DMA_FILL: u32 = 1;
    /// DMA_CMD: sum the buffer's bytes.
    pub const DMA_SUM: u32 = 2;
    /// DMA_STATUS: no DMA yet.
    pub const DMA_IDLE: u32 = 0;
    /// DMA_STATUS: the last DMA completed.
    pub const DMA_DONE: u32 = 1;
    /// DMA_STATUS: bus mastering is off.
    pub const DMA_ERR_BUS_MASTER: u32 = 0x81;
    /// DMA_STATUS: the length is 0 or above [`TestDevice::MAX_DMA_LEN`].
    pub const DMA_ERR_LENGTH: u32 = 0x82;
    /// DMA_STATUS: the buffer is not (all) guest memory, or was refused.
    pub const DMA_ERR_MEMORY: u32 = 0x83;
    /// DMA_STATUS: DMA_CMD held an unknown command.
    pub const DMA_ERR_COMMAND: u32 = 0x84;
    /// The longest DMA, which bounds the work one guest write can cause.
    pub const MAX_DMA_LEN: u32 = 64 << 10;
    /// MSI vectors the device supports.
    pub const MSI_VECTORS: u8 = 4;
    /// MSI-X vectors (table entries) the device supports.
    pub const MSIX_VECTORS: u16 = 2;
    /// Where BAR 0 holds the MSI-X table.
    pub const MSIX_TABLE: u64 = 0x800;
    /// Where BAR 0 holds the MSI-X pending bit array.
    pub const MSIX_PBA: u64 = 0xc00;

    /// A test device that reaches guest memory through `dma` and
    /// interrupts through `interrupts` (none: interrupts are dropped).
    pub fn new(dma: Arc<dyn DmaMemory>, interrupts: Option<Arc<dyn InterruptSink>>) -> Self {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: VENDOR_ID,
            device_id: TEST_DEVICE_ID,
            revision_id: 1,
            class: ClassCode::UNCLASSIFIED,
            subsystem_vendor_id: VENDOR_ID,
            subsystem_id: TEST_DEVICE_ID,
            interrupt_pin: Some(IntxPin::A),
            multifunction: false,
        });
        // Fixed parameters on an empty configuration space: these fail only
        // if the constants above are changed to something invalid.
        let bar = Bar::mmio32(Self::BAR_SIZE, false).expect("4 KiB is a valid BAR size");
        config
            .set_bar(0, bar)
            .expect("BAR 0 of a new configuration space is free");
        let msi_at = config
            .add_msi(MsiConfig {
                vectors: Self::MSI_VECTORS,
                address_64bit: true,
                per_vector_mask: true,
            })
            .expect("an MSI capability fits in a new configuration space");
        let msi = Msi::at(&config, msi_at);
        let msix_at = config
            .add_msix(MsixConfig {
                table_size: Self::MSIX_VECTORS,
                table_bar: 0,
                table_offset: Self::MSIX_TABLE as u32,
                pba_bar: 0,
                pba_offset: Self::MSIX_PBA as u32,
            })
            .expect("an MSI-X capability fits after MSI");
        let msix = MsixEmulation::new(&config, Msix::at(msix_at));
        TestDevice {
            config,
            msi,
            msix,
            regs: Regs::default(),
            intx: false,
            dma,
            interrupts,
        }
    }

    fn register(&self, offset: u64) -> u32 {
        let r = &self.regs;
        match offset {
            Self::ID => Self::ID_VALUE,
            Self::SCRATCH => r.scratch,
            Self::IRQ_STATUS => r.irq_status,
            Self::DMA_ADDR_LO => r.dma_addr as u32,
            Self::DMA_ADDR_HI => (r.dma_addr >> 32) as u32,
            Self::DMA_LEN => r.dma_len,
            Self::DMA_STATUS => r.dma_status,
            Self::DMA_RESULT => r.dma_result,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let r = &mut self.regs;
        match offset {
            Self::SCRATCH => r.scratch = value,
            Self::DOORBELL => self.ring(value),
            Self::IRQ_STATUS => {
                r.irq_status &= !value;
                self.update_intx();
            }
            Self::DMA_ADDR_LO => r.dma_addr = r.dma_addr & !0xffff_ffff | u64::from(value),
            Self::DMA_ADDR_HI => r.dma_addr = r.dma_addr & 0xffff_ffff | u64::from(value) << 32,
            Self::DMA_LEN => r.dma_len = value,
            Self::DMA_CMD => {
                let (status, result) = self.run_dma(value);
                self.regs.dma_status = status;
                self.regs.dma_result = result;
            }
            _ => {}
        }
    }

    /// True if MSI or MSI-X is on, which turns INTx off.
    fn message_signalled(&self) -> bool {
        self.msi.is_enabled(&self.config) || self.msix.is_enabled(&self.config)
    }

    /// The doorbell: MSI-X or MSI vector `vector` if either is on, INTx
    /// otherwise.
    fn ring(&mut self, vector: u32) {
        if !self.message_signalled() {
            self.regs.irq_status |= IRQ_DOORBELL;
            self.update_intx();
            return;
        }
        if !self.config.command().bus_master() {
            return;
        }
        let signal = if self.msix.is_enabled(&self.config) {
            self.msix.signal(&self.config, vector)
        } else {
            self.msi.signal(&mut self.config, vector)
        };
        if let MsiSignal::Send(message) = signal {
            self.send_msi(message);
        }
    }

    /// Sends what unmasking released, if the device may write memory.
    fn send_unmasked(&mut self) {
        if self.config.command().bus_master() {
            let mut messages = self.msi.take_unmasked(&mut self.config);
            messages.extend(self.msix.take_unmasked(&self.config));
            for message in messages {
                self.send_msi(message);
            }
        }
    }

    fn send_msi(&self, message: MsiMessage) {
        if let Some(sink) = &self.interrupts {
            // A failed delivery is the VMM's to report; the device has no
            // way to retry a message, as a real one has none.
            let _ = sink.send_msi(message);
        }
    }

    /// Drives INTx from IRQ_STATUS, the INTx disable bit and MSI enable,
    /// and mirrors the pending state in the status register.
    fn update_intx(&mut self) {
        let pending = self.regs.irq_status != 0;
        self.config.set_interrupt_status(pending);
        let level = pending && !self.config.command().intx_disabled() && !self.message_signalled();
        if level == self.intx {
            return;
        }
        match &self.interrupts {
            // If the sink fails, the level is not recorded, so the next
            // update tries again.
            Some(sink) => {
                if sink.set_intx(level).is_ok() {
                    self.intx = level;
                }
            }
            None => self.intx = level,
        }
    }

    /// Runs DMA command `command`; returns DMA_STATUS and DMA_RESULT.
    fn run_dma(&self, command: u32) -> (u32, u32) {
        if !self.config.command().bus_master() {
            return (Self::DMA_ERR_BUS_MASTER, 0);
        }
        let len = self.regs.dma_len;
        if len == 0 || len > Self::MAX_DMA_LEN {
            return (Self::DMA_ERR_LENGTH, 0);
        }
        let gpa = self.regs.dma_addr;
        let len = len as usize;
        if gpa.checked_add(len as u64).is_none() {
            return (Self::DMA_ERR_MEMORY, 0);
        }
        match command {
            Self::DMA_FILL => {
                let pattern: Vec<u8> = (0..len).map(dma_pattern).collect();
                match self.dma.write(gpa, &pattern) {
                    Ok(()) => (Self::DMA_DONE, len as u32),
                    Err(_) => (Self::DMA_ERR_MEMORY, 0),
                }
            }
            Self::DMA_SUM => {
                let mut buf = vec![0; len];
                match self.dma.read(gpa, &mut buf) {
                    Ok(()) => {
                        let sum = buf.iter().fold(0u32, |s, &b| s.wrapping_add(b.into()));
                        (Self::DMA_DONE, sum)
                    }
                    Err(_) => (Self::DMA_ERR_MEMORY, 0),
                }
            }
            _ => (Self::DMA_ERR_COMMAND, 0),
        }
    }
}

impl PciDevice for TestDevice {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config.read(offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        self.config.write(offset, size, value);
        // The write may have unmasked a pending vector, enabled MSI or
        // flipped INTx disable.
        self.send_unmasked();
        self.update_intx();
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        if bar != 0 {
            return all_ones(size);
        }
        if let Some(value) = self.msix.bar_read(&self.config, bar, offset, size) {
            return value;
        }
        let lane = offset & 3;
        match size {
            1 | 2 | 4 if lane + u64::from(size) <= 4 => {
                let value = u64::from(self.register(offset - lane)) >> (8 * lane);
                value & all_ones(size)
            }
            8 if offset.is_multiple_of(8) => {
                u64::from(self.register(offset)) | u64::from(self.register(offset + 4)) << 32
            }
            _ => 0,
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
        if bar != 0 {
            return;
        }
        if self.msix.bar_write(&self.config, bar, offset, size, value) {
            self.send_unmasked();
            return;
        }
        match size {
            4 if offset.is_multiple_of(4) => self.write_register(offset, value as u32),
            8 if offset.is_multiple_of(8) => {
                self.write_register(offset, value as u32);
                self.write_register(offset + 4, (value >> 32) as u32);
            }
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.msix.reset();
        self.regs = Regs::default();
        self.update_intx();
    }
}

#[cfg(test)]
mod tests;

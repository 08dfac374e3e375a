//! A type-0 configuration space: 256 bytes reachable through mechanism #1
//! and 4 KiB through ECAM, with per-bit write masks that give every
//! register its guest-visible behaviour (read-only, read-write,
//! write-1-to-clear), the header fields, and the BAR registers.
//!
//! The device side sets registers directly ([`ConfigSpace::set_word`] and
//! friends, ignoring the masks); the guest side goes through
//! [`ConfigSpace::read`] and [`ConfigSpace::write`], which apply them.

use thiserror::Error;

use crate::all_ones;
use crate::bar::{Bar, BarRegion};

/// The bytes mechanism #1 reaches.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// The bytes ECAM reaches; above [`CONFIG_SPACE_SIZE`] they read zero,
/// which tells a guest there is no PCI Express extended capability.
pub const EXTENDED_CONFIG_SPACE_SIZE: usize = 4096;

/// Offsets of the type-0 header's registers.
pub mod reg {
    /// Vendor ID, 16 bits.
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID, 16 bits.
    pub const DEVICE_ID: u16 = 0x02;
    /// Command, 16 bits.
    pub const COMMAND: u16 = 0x04;
    /// Status, 16 bits.
    pub const STATUS: u16 = 0x06;
    /// Revision ID, 8 bits.
    pub const REVISION_ID: u16 = 0x08;
    /// Class code: programming interface, then subclass, then base class.
    pub const CLASS_CODE: u16 = 0x09;
    /// Cache line size, 8 bits.
    pub const CACHE_LINE_SIZE: u16 = 0x0C;
    /// Header type, 8 bits (bit 7: multi-function).
    pub const HEADER_TYPE: u16 = 0x0E;
    /// BAR 0; BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID, 16 bits.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
    /// Subsystem ID, 16 bits.
    pub const SUBSYSTEM_ID: u16 = 0x2E;
    /// Expansion ROM base address (none here: reads zero).
    pub const EXPANSION_ROM: u16 = 0x30;
    /// Offset of the first capability, 8 bits.
    pub const CAPABILITIES: u16 = 0x34;
    /// Interrupt line, 8 bits: firmware's note of the INTx routing.
    pub const INTERRUPT_LINE: u16 = 0x3C;
    /// Interrupt pin, 8 bits: 0 for none, 1-4 for INTA#-INTD#.
    pub const INTERRUPT_PIN: u16 = 0x3D;
}

/// The command register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command(pub u16);

impl Command {
    /// Decode I/O BARs.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Decode memory BARs.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// The device may master the bus: DMA and MSI writes.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Report parity errors.
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    /// Report system errors.
    pub const SERR_ENABLE: u16 = 1 << 8;
    /// Do not assert INTx.
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// The bits a guest can change; the rest read zero.
    pub const WRITABLE: u16 = Self::IO_SPACE
        | Self::MEMORY_SPACE
        | Self::BUS_MASTER
        | Self::PARITY_ERROR_RESPONSE
        | Self::SERR_ENABLE
        | Self::INTX_DISABLE;

    /// True if I/O BARs decode.
    pub fn io_space(self) -> bool {
        self.0 & Self::IO_SPACE != 0
    }

    /// True if memory BARs decode.
    pub fn memory_space(self) -> bool {
        self.0 & Self::MEMORY_SPACE != 0
    }

    /// True if the device may DMA and send MSIs.
    pub fn bus_master(self) -> bool {
        self.0 & Self::BUS_MASTER != 0
    }

    /// True if INTx is disabled.
    pub fn intx_disabled(self) -> bool {
        self.0 & Self::INTX_DISABLE != 0
    }
}

/// The status register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// The device has an INTx interrupt pending (read-only; set whatever
    /// the INTx disable bit says).
    pub const INTERRUPT: u16 = 1 << 3;
    /// The capabilities pointer is valid (read-only).
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    /// The error bits, which a guest clears by writing 1: master data
    /// parity error, signaled and received target abort, received master
    /// abort, signaled system error, detected parity error.
    pub const WRITE_1_TO_CLEAR: u16 = 1 << 8 | 0xf800;
}

/// A function's class: base class, subclass and programming interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCode {
    /// Base class (register 0x0B).
    pub base: u8,
    /// Subclass (register 0x0A).
    pub sub: u8,
    /// Programming interface (register 0x09).
    pub prog_if: u8,
}

impl ClassCode {
    /// Bridge device, host bridge.
    pub const HOST_BRIDGE: ClassCode = ClassCode {
        base: 0x06,
        sub: 0x00,
        prog_if: 0x00,
    };
    /// Network controller, Ethernet: what a passed-through NIC reports.
    pub const ETHERNET: ClassCode = ClassCode {
        base: 0x02,
        sub: 0x00,
        prog_if: 0x00,
    };
    /// "Device does not fit any defined class": what a test device is.
    pub const UNCLASSIFIED: ClassCode = ClassCode {
        base: 0xff,
        sub: 0x00,
        prog_if: 0x00,
    };
}

/// An INTx pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntxPin {
    /// INTA#.
    A,
    /// INTB#.
    B,
    /// INTC#.
    C,
    /// INTD#.
    D,
}

impl IntxPin {
    /// The interrupt pin register's value, 1-4.
    pub fn register(self) -> u8 {
        self.index() + 1
    }

    /// 0 for INTA# to 3 for INTD#.
    pub fn index(self) -> u8 {
        match self {
            IntxPin::A => 0,
            IntxPin::B => 1,
            IntxPin::C => 2,
            IntxPin::D => 3,
        }
    }

    /// The pin an interrupt pin register names; `None` for 0 (no pin) and
    /// reserved values.
    pub fn from_register(value: u8) -> Option<IntxPin> {
        match value {
            1 => Some(IntxPin::A),
            2 => Some(IntxPin::B),
            3 => Some(IntxPin::C),
            4 => Some(IntxPin::D),
            _ => None,
        }
    }
}

/// The fixed identity of a function, written once into its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Class code.
    pub class: ClassCode,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// The INTx pin, if the function has one.
    pub interrupt_pin: Option<IntxPin>,
    /// Header type bit 7: the device has more functions than 0.
    pub multifunction: bool,
}

/// Header type bit 7.
const MULTIFUNCTION: u8 = 0x80;
/// The number of BAR registers in a type-0 header.
const BAR_COUNT: u8 = 6;
/// Where capabilities start: right after the type-0 header.
pub(crate) const FIRST_CAPABILITY: u16 = 0x40;

/// What one of the six BAR registers holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Free,
    Bar(Bar),
    /// The upper register of the 64-bit BAR just below.
    UpperHalf,
}

/// A function's configuration space: the bytes, the masks that decide what
/// a guest write may change, and the power-on bytes that reset restores.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    power_on: Vec<u8>,
    /// Bits a guest write sets to the written value.
    writable: Vec<u8>,
    /// Bits a guest write of 1 clears.
    write_1_to_clear: Vec<u8>,
    bars: [BarSlot; BAR_COUNT as usize],
    /// Where the next capability goes.
    pub(crate) next_capability: u16,
    /// The last capability in the list, whose next pointer a new one
    /// links into.
    pub(crate) last_capability: Option<u16>,
}

impl ConfigSpace {
    /// A configuration space with `header`'s identity, every writable
    /// register at its power-on value, no BARs and no capabilities.
    pub fn new(header: &Header) -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: vec![0; EXTENDED_CONFIG_SPACE_SIZE],
            power_on: vec![0; EXTENDED_CONFIG_SPACE_SIZE],
            writable: vec![0; EXTENDED_CONFIG_SPACE_SIZE],
            write_1_to_clear: vec![0; EXTENDED_CONFIG_SPACE_SIZE],
            bars: [BarSlot::Free; BAR_COUNT as usize],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        let class = header.class;
        let header_type = if header.multifunction {
            MULTIFUNCTION
        } else {
            0
        };
        let pin = header.interrupt_pin.map_or(0, IntxPin::register);
        c.define(reg::VENDOR_ID, 2, header.vendor_id.into(), 0, 0);
        c.define(reg::DEVICE_ID, 2, header.device_id.into(), 0, 0);
        c.define(reg::COMMAND, 2, 0, Command::WRITABLE.into(), 0);
        c.define(reg::STATUS, 2, 0, 0, Status::WRITE_1_TO_CLEAR.into());
        c.define(reg::REVISION_ID, 1, header.revision_id.into(), 0, 0);
        let class_bytes = u32::from_le_bytes([class.prog_if, class.sub, class.base, 0]);
        c.define(reg::CLASS_CODE, 3, class_bytes, 0, 0);
        // Linux writes the cache line size; it has no effect here.
        c.define(reg::CACHE_LINE_SIZE, 1, 0, 0xff, 0);
        c.define(reg::HEADER_TYPE, 1, header_type.into(), 0, 0);
        c.define(
            reg::SUBSYSTEM_VENDOR_ID,
            2,
            header.subsystem_vendor_id.into(),
            0,
            0,
        );
        c.define(reg::SUBSYSTEM_ID, 2, header.subsystem_id.into(), 0, 0);
        c.define(reg::INTERRUPT_LINE, 1, 0, 0xff, 0);
        c.define(reg::INTERRUPT_PIN, 1, pin.into(), 0, 0);
        c
    }

    /// Defines a device-specific register of `size` bytes (1 to 4) at
    /// `offset`: its power-on `value`, the bits a guest may write and the
    /// bits a guest clears by writing 1. Bits in neither mask are
    /// read-only to the guest.
    pub fn define(&mut self, offset: u16, size: u8, value: u32, writable: u32, w1c: u32) {
        for i in 0..usize::from(size.min(4)) {
            let Some(o) = index(offset, i) else { return };
            let lane = |v: u32| (v >> (8 * i)) as u8;
            self.bytes[o] = lane(value);
            self.power_on[o] = lane(value);
            self.writable[o] = lane(writable);
            self.write_1_to_clear[o] = lane(w1c);
        }
    }

    /// Sets `bits` of the 16-bit register at `offset` now and at power-on,
    /// leaving its masks alone (the status register's capability bit).
    pub(crate) fn set_power_on_bits(&mut self, offset: u16, bits: u16) {
        for (i, b) in bits.to_le_bytes().into_iter().enumerate() {
            if let Some(o) = index(offset, i) {
                self.bytes[o] |= b;
                self.power_on[o] |= b;
            }
        }
    }

    /// A guest read of `size` bytes (1, 2 or 4) at `offset`, little-endian.
    /// Reads past the end or of other sizes return all-ones, as an
    /// unsupported request does.
    pub fn read(&self, offset: u16, size: u8) -> u32 {
        match self.range(offset, size) {
            Some(r) => self.bytes[r]
                .iter()
                .rev()
                .fold(0, |v, &b| v << 8 | u32::from(b)),
            None => all_ones(size) as u32,
        }
    }

    /// A guest write of the low `size` bytes of `value` at `offset`: only
    /// writable bits take the new value, and write-1-to-clear bits clear
    /// where `value` has a 1. Writes past the end or of other sizes are
    /// dropped.
    pub fn write(&mut self, offset: u16, size: u8, value: u32) {
        let Some(r) = self.range(offset, size) else {
            return;
        };
        for (i, o) in r.enumerate() {
            let v = (value >> (8 * i)) as u8;
            let kept = self.bytes[o] & !self.writable[o];
            let written = v & self.writable[o];
            self.bytes[o] = (kept | written) & !(v & self.write_1_to_clear[o]);
        }
    }

    fn range(&self, offset: u16, size: u8) -> Option<std::ops::Range<usize>> {
        let start = usize::from(offset);
        let end = start + usize::from(size);
        (matches!(size, 1 | 2 | 4) && end <= self.bytes.len()).then_some(start..end)
    }

    /// The byte at `offset`, as the device sees it; all-ones past the end.
    pub fn byte(&self, offset: u16) -> u8 {
        self.read(offset, 1) as u8
    }

    /// The 16 bits at `offset`; all-ones past the end.
    pub fn word(&self, offset: u16) -> u16 {
        self.read(offset, 2) as u16
    }

    /// The 32 bits at `offset`; all-ones past the end.
    pub fn dword(&self, offset: u16) -> u32 {
        self.read(offset, 4)
    }

    /// Sets the byte at `offset` whatever the masks say (the device's own
    /// state, such as a status bit); ignored past the end.
    pub fn set_byte(&mut self, offset: u16, value: u8) {
        self.set(offset, &[value]);
    }

    /// Sets 16 bits at `offset` whatever the masks say.
    pub fn set_word(&mut self, offset: u16, value: u16) {
        self.set(offset, &value.to_le_bytes());
    }

    /// Sets 32 bits at `offset` whatever the masks say.
    pub fn set_dword(&mut self, offset: u16, value: u32) {
        self.set(offset, &value.to_le_bytes());
    }

    fn set(&mut self, offset: u16, value: &[u8]) {
        let start = usize::from(offset);
        if let Some(dst) = self.bytes.get_mut(start..start + value.len()) {
            dst.copy_from_slice(value);
        }
    }

    /// Restores every register to its power-on value, as a function-level
    /// reset does.
    pub fn reset(&mut self) {
        self.bytes.copy_from_slice(&self.power_on);
    }

    /// The vendor ID.
    pub fn vendor_id(&self) -> u16 {
        self.word(reg::VENDOR_ID)
    }

    /// The device ID.
    pub fn device_id(&self) -> u16 {
        self.word(reg::DEVICE_ID)
    }

    /// The command register.
    pub fn command(&self) -> Command {
        Command(self.word(reg::COMMAND))
    }

    /// The status register.
    pub fn status(&self) -> Status {
        Status(self.word(reg::STATUS))
    }

    /// The class code.
    pub fn class_code(&self) -> ClassCode {
        ClassCode {
            base: self.byte(reg::CLASS_CODE + 2),
            sub: self.byte(reg::CLASS_CODE + 1),
            prog_if: self.byte(reg::CLASS_CODE),
        }
    }

    /// The INTx pin, if any.
    pub fn interrupt_pin(&self) -> Option<IntxPin> {
        IntxPin::from_register(self.byte(reg::INTERRUPT_PIN))
    }

    /// Sets or clears the status register's interrupt bit, which mirrors
    /// the device's INTx state.
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let status = self.word(reg::STATUS) & !Status::INTERRUPT;
        let bit = if pending { Status::INTERRUPT } else { 0 };
        self.set_word(reg::STATUS, status | bit);
    }

    /// Declares BAR `index` (0-5; a 64-bit BAR also takes `index + 1`).
    /// The register reads the BAR's flags with address 0 (unassigned);
    /// only the address bits at and above its size are writable, which is
    /// what makes sizing work.
    pub fn set_bar(&mut self, index: u8, bar: Bar) -> Result<(), ConfigError> {
        let slots = if bar.is_64bit() { 2 } else { 1 };
        if index + slots > BAR_COUNT {
            return Err(ConfigError::BarIndex { index });
        }
        let i = usize::from(index);
        if let Some(taken) = (i..i + usize::from(slots)).find(|&s| self.bars[s] != BarSlot::Free) {
            return Err(ConfigError::BarTaken { index: taken as u8 });
        }
        let (low, high) = bar.register_masks();
        self.define(bar_register(index), 4, bar.flags(), low, 0);
        self.bars[i] = BarSlot::Bar(bar);
        if let Some(high) = high {
            self.define(bar_register(index + 1), 4, 0, high, 0);
            self.bars[i + 1] = BarSlot::UpperHalf;
        }
        Ok(())
    }

    /// The declared BARs with the addresses now in their registers.
    pub fn bar_regions(&self) -> Vec<BarRegion> {
        (0..BAR_COUNT)
            .filter_map(|index| match self.bars[usize::from(index)] {
                BarSlot::Bar(bar) => Some(BarRegion {
                    index,
                    bar,
                    address: self.bar_address(index, &bar),
                }),
                BarSlot::Free | BarSlot::UpperHalf => None,
            })
            .collect()
    }

    fn bar_address(&self, index: u8, bar: &Bar) -> u64 {
        let low = self.dword(bar_register(index));
        let high = if bar.is_64bit() {
            self.dword(bar_register(index + 1))
        } else {
            0
        };
        bar.decode_address(low, high)
    }
}

/// The offset of BAR register `index`.
fn bar_register(index: u8) -> u16 {
    reg::BAR0 + 4 * u16::from(index)
}

/// The byte index of `offset + i`, if inside the extended space.
fn index(offset: u16, i: usize) -> Option<usize> {
    let o = usize::from(offset) + i;
    (o < EXTENDED_CONFIG_SPACE_SIZE).then_some(o)
}

/// Why a configuration space cannot be built as asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The BAR index is past the six registers (a 64-bit BAR needs two).
    #[error(
        "BAR {index} does not exist: a type-0 header has BARs 0 to 5, and a 64-bit BAR takes two"
    )]
    BarIndex {
        /// The index asked for.
        index: u8,
    },
    /// The BAR register is already in use.
    #[error("BAR {index} is already declared")]
    BarTaken {
        /// The register in use.
        index: u8,
    },
    /// The capability does not fit below offset 0x100.
    #[error("no room for capability {id:#04x} of {len} bytes: the list is full at {next:#x}")]
    NoRoom {
        /// The capability ID.
        id: u8,
        /// Its length.
        len: usize,
        /// Where it would have gone.
        next: u16,
    },
    /// The capability's parameters are out of range.
    #[error("invalid capability: {0}")]
    InvalidCapability(&'static str),
}

/// The identity the crate's tests give their configuration spaces.
#[cfg(test)]
pub(crate) fn test_header() -> Header {
    Header {
        vendor_id: 0x5741,
        device_id: 0x1234,
        revision_id: 2,
        class: ClassCode::UNCLASSIFIED,
        subsystem_vendor_id: 0x5741,
        subsystem_id: 0x0042,
        interrupt_pin: Some(IntxPin::A),
        multifunction: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reads_back_at_any_size_and_offset() {
        let c = ConfigSpace::new(&test_header());
        assert_eq!(c.read(0, 4), 0x1234_5741);
        assert_eq!(c.read(1, 2), 0x3457);
        assert_eq!(c.read(3, 1), 0x12);
        assert_eq!(c.read(0x08, 4), 0xff00_0002);
        assert_eq!(c.read(0x2c, 4), 0x0042_5741);
        assert_eq!(c.read(0x3c, 2), 0x0100);
        assert_eq!(c.class_code(), ClassCode::UNCLASSIFIED);
        assert_eq!(c.interrupt_pin(), Some(IntxPin::A));
        assert_eq!(c.read(reg::HEADER_TYPE, 1), 0);
        // The extended space reads zero: no extended capabilities.
        assert_eq!(c.read(0x100, 4), 0);
        assert_eq!(c.read(0xffc, 4), 0);
    }

    #[test]
    fn bad_sizes_and_offsets_read_all_ones_and_write_nothing() {
        let mut c = ConfigSpace::new(&test_header());
        assert_eq!(c.read(0, 3), u32::MAX);
        assert_eq!(c.read(0xffe, 4), u32::MAX);
        assert_eq!(c.read(0x1000, 1), 0xff);
        c.write(reg::COMMAND, 8, 0xffff);
        c.write(0xfff, 2, 0xffff);
        assert_eq!(c.command(), Command(0));
    }

    #[test]
    fn read_only_bits_ignore_writes() {
        let mut c = ConfigSpace::new(&test_header());
        c.write(0, 4, 0xffff_ffff);
        c.write(reg::CLASS_CODE, 2, 0);
        c.write(reg::INTERRUPT_PIN, 1, 3);
        assert_eq!(c.vendor_id(), 0x5741);
        assert_eq!(c.device_id(), 0x1234);
        assert_eq!(c.class_code(), ClassCode::UNCLASSIFIED);
        assert_eq!(c.interrupt_pin(), Some(IntxPin::A));
        // Only the defined command bits stick.
        c.write(reg::COMMAND, 2, 0xffff);
        assert_eq!(c.command(), Command(Command::WRITABLE));
        c.write(reg::INTERRUPT_LINE, 1, 11);
        assert_eq!(c.byte(reg::INTERRUPT_LINE), 11);
    }

    #[test]
    fn status_error_bits_clear_on_writing_one() {
        let mut c = ConfigSpace::new(&test_header());
        c.set_word(reg::STATUS, 0xf900 | Status::INTERRUPT);
        // Writing 0 changes nothing; writing 1 clears only those bits.
        c.write(reg::STATUS, 2, 0);
        assert_eq!(c.status().0, 0xf900 | Status::INTERRUPT);
        c.write(reg::STATUS, 2, (0x2000 | Status::INTERRUPT).into());
        assert_eq!(c.status().0, 0xd900 | Status::INTERRUPT);
        // A byte write to the upper half hits the same bits.
        c.write(reg::STATUS + 1, 1, 0xff);
        assert_eq!(c.status().0, Status::INTERRUPT);
        // A dword write to the command register leaves status alone
        // unless it carries ones for it.
        c.set_word(reg::STATUS, 0x8000);
        c.write(reg::COMMAND, 4, 0x0000_0006);
        assert_eq!((c.command().0, c.status().0), (6, 0x8000));
    }

    #[test]
    fn a_32_bit_memory_bar_sizes_and_keeps_its_flags() {
        let mut c = ConfigSpace::new(&test_header());
        c.set_bar(0, Bar::mmio32(0x1000, true).unwrap()).unwrap();
        assert_eq!(c.read(reg::BAR0, 4), 0x8);
        c.write(reg::BAR0, 4, 0xffff_ffff);
        assert_eq!(c.read(reg::BAR0, 4), 0xffff_f008);
        c.write(reg::BAR0, 4, 0xe800_0123);
        assert_eq!(c.read(reg::BAR0, 4), 0xe800_0008);
        assert_eq!(c.bar_regions()[0].address, 0xe800_0000);
    }

    #[test]
    fn a_64_bit_bar_sizes_both_halves() {
        let mut c = ConfigSpace::new(&test_header());
        c.set_bar(2, Bar::mmio64(0x1_0000_0000, false).unwrap())
            .unwrap();
        let (low, high) = (reg::BAR0 + 8, reg::BAR0 + 12);
        assert_eq!(c.read(low, 4), 0x4);
        c.write(low, 4, 0xffff_ffff);
        c.write(high, 4, 0xffff_ffff);
        // 4 GiB: no address bit of the low half is writable.
        assert_eq!(c.read(low, 4), 0x4);
        assert_eq!(c.read(high, 4), 0xffff_ffff);
        c.write(high, 4, 0x40);
        assert_eq!(c.bar_regions()[0].address, 0x40_0000_0000);
        // A small 64-bit BAR: the high half is fully writable.
        let mut c = ConfigSpace::new(&test_header());
        c.set_bar(0, Bar::mmio64(0x4000, true).unwrap()).unwrap();
        c.write(reg::BAR0, 4, 0xffff_ffff);
        c.write(reg::BAR0 + 4, 4, 0xffff_ffff);
        assert_eq!(c.read(reg::BAR0, 4), 0xffff_c00c);
        assert_eq!(c.read(reg::BAR0 + 4, 4), 0xffff_ffff);
        c.write(reg::BAR0, 4, 0xe800_0000);
        c.write(reg::BAR0 + 4, 4, 0);
        let region = c.bar_regions()[0];
        assert_eq!((region.index, region.address), (0, 0xe800_0000));
    }

    #[test]
    fn an_io_bar_sizes_within_16_bits() {
        let mut c = ConfigSpace::new(&test_header());
        c.set_bar(5, Bar::io(0x20).unwrap()).unwrap();
        let r = reg::BAR0 + 20;
        assert_eq!(c.read(r, 4), 0x1);
        c.write(r, 4, 0xffff_ffff);
        assert_eq!(c.read(r, 4), 0xffe1);
        c.write(r, 4, 0xc040);
        assert_eq!(c.bar_regions()[0].address, 0xc040);
    }

    #[test]
    fn undeclared_bars_and_the_rom_read_zero_even_after_sizing() {
        let mut c = ConfigSpace::new(&test_header());
        c.set_bar(0, Bar::mmio32(0x1000, false).unwrap()).unwrap();
        for r in [reg::BAR0 + 4, reg::BAR0 + 20, reg::EXPANSION_ROM] {
            c.write(r, 4, 0xffff_ffff);
            assert_eq!(c.read(r, 4), 0, "register {r:#x}");
        }
        assert_eq!(c.bar_regions().len(), 1);
    }

    #[test]
    fn bar_slots_are_checked() {
        let mut c = ConfigSpace::new(&test_header());
        let m64 = Bar::mmio64(0x1000, false).unwrap();
        assert_eq!(c.set_bar(5, m64), Err(ConfigError::BarIndex { index: 5 }));
        assert_eq!(
            c.set_bar(6, Bar::io(4).unwrap()),
            Err(ConfigError::BarIndex { index: 6 })
        );
        c.set_bar(1, m64).unwrap();
        assert_eq!(
            c.set_bar(2, Bar::io(4).unwrap()),
            Err(ConfigError::BarTaken { index: 2 })
        );
        assert_eq!(c.set_bar(0, m64), Err(ConfigError::BarTaken { index: 1 }));
    }

    #[test]
    fn reset_restores_power_on_values() {
        let mut c = ConfigSpace::new(&test_header());
        c.set_bar(0, Bar::mmio32(0x1000, false).unwrap()).unwrap();
        c.write(reg::BAR0, 4, 0xe800_0000);
        c.write(reg::COMMAND, 2, 0x7);
        c.set_interrupt_status(true);
        c.reset();
        assert_eq!(c.read(reg::BAR0, 4), 0);
        assert_eq!(c.command(), Command(0));
        assert_eq!(c.status(), Status(0));
        assert_eq!(c.vendor_id(), 0x5741);
    }
}

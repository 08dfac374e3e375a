//! The capability list: adding MSI, MSI-X and vendor-specific
//! capabilities to a [`ConfigSpace`] with the right write masks, and
//! walking the list as a guest (or passthrough code filtering a real
//! device's list) does.
//!
//! Capabilities are placed one after the other from offset 0x40, dword
//! aligned, each linked from the previous one's next pointer; the first
//! is linked from the capabilities pointer (0x34) and the status register
//! says the list exists.

use crate::config::{reg, ConfigError, ConfigSpace, Status, CONFIG_SPACE_SIZE, FIRST_CAPABILITY};
use crate::msi::{self, MsiLayout};
use crate::msix;

/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID of a vendor-specific capability.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// The most capabilities that fit between 0x40 and 0x100, which bounds a
/// walk through a list that loops.
const MAX_CAPABILITIES: usize = (CONFIG_SPACE_SIZE - FIRST_CAPABILITY as usize) / 4;
/// Next pointers are dword aligned; the low two bits are reserved.
const POINTER_MASK: u8 = 0xfc;

/// How an MSI capability is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiConfig {
    /// Vectors the device supports: 1, 2, 4, 8, 16 or 32.
    pub vectors: u8,
    /// The message address has 64 bits.
    pub address_64bit: bool,
    /// Each vector has a mask bit and a pending bit.
    pub per_vector_mask: bool,
}

/// How an MSI-X capability is built. Table and PBA live in BARs, which
/// the device declares separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixConfig {
    /// Table entries, 1 to 2048.
    pub table_size: u16,
    /// The BAR holding the table.
    pub table_bar: u8,
    /// The table's offset in that BAR, 8-byte aligned.
    pub table_offset: u32,
    /// The BAR holding the pending bit array.
    pub pba_bar: u8,
    /// The PBA's offset in that BAR, 8-byte aligned.
    pub pba_offset: u32,
}

/// MSI-X control: table size minus one, bits 10:0.
const MSIX_TABLE_SIZE: u16 = 0x7ff;
/// MSI-X control: all vectors masked.
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// MSI-X control: enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// Table and PBA registers: BAR index in bits 2:0, offset above.
const MSIX_BIR: u32 = 0x7;

/// One entry of the capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// The capability ID.
    pub id: u8,
    /// Where it starts in configuration space.
    pub offset: u16,
}

/// Walks a capability list; see [`ConfigSpace::capabilities`].
#[derive(Debug, Clone)]
pub struct CapabilityIter<'a> {
    config: &'a ConfigSpace,
    next: u8,
    left: usize,
}

impl Iterator for CapabilityIter<'_> {
    type Item = Capability;

    fn next(&mut self) -> Option<Capability> {
        // A pointer into the header ends the list (0 is the usual end).
        if self.left == 0 || u16::from(self.next) < FIRST_CAPABILITY {
            return None;
        }
        self.left -= 1;
        let offset = u16::from(self.next);
        self.next = self.config.byte(offset + 1) & POINTER_MASK;
        Some(Capability {
            id: self.config.byte(offset),
            offset,
        })
    }
}

/// The MSI-X capability's fields, as read from configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixInfo {
    /// Table entries.
    pub table_size: u16,
    /// The BAR holding the table.
    pub table_bar: u8,
    /// The table's offset in it.
    pub table_offset: u32,
    /// The BAR holding the PBA.
    pub pba_bar: u8,
    /// The PBA's offset in it.
    pub pba_offset: u32,
    /// The guest set the enable bit.
    pub enabled: bool,
    /// The guest masked every vector at once.
    pub function_masked: bool,
}

impl MsixInfo {
    /// Reads the MSI-X capability at `offset`.
    pub fn read(config: &ConfigSpace, offset: u16) -> MsixInfo {
        let control = config.word(offset + 2);
        let table = config.dword(offset + 4);
        let pba = config.dword(offset + 8);
        MsixInfo {
            table_size: (control & MSIX_TABLE_SIZE) + 1,
            table_bar: (table & MSIX_BIR) as u8,
            table_offset: table & !MSIX_BIR,
            pba_bar: (pba & MSIX_BIR) as u8,
            pba_offset: pba & !MSIX_BIR,
            enabled: control & MSIX_ENABLE != 0,
            function_masked: control & MSIX_FUNCTION_MASK != 0,
        }
    }

    /// Where the table is: its BAR, its offset in that BAR and its length
    /// in bytes (16 per entry). A device traps these bytes rather than
    /// mapping them, and hands accesses to [`MsixTable::table_read`] and
    /// [`MsixTable::table_write`] with offsets from its start.
    ///
    /// [`MsixTable::table_read`]: crate::MsixTable::table_read
    /// [`MsixTable::table_write`]: crate::MsixTable::table_write
    pub fn table_range(&self) -> (u8, u64, u64) {
        (
            self.table_bar,
            u64::from(self.table_offset),
            u64::from(self.table_size) * msix::ENTRY_SIZE,
        )
    }

    /// Where the pending bit array is: its BAR, its offset in that BAR and
    /// its length in bytes (one bit per entry, in whole qwords). Reads go
    /// to [`MsixTable::pba_read`] with offsets from its start.
    ///
    /// [`MsixTable::pba_read`]: crate::MsixTable::pba_read
    pub fn pba_range(&self) -> (u8, u64, u64) {
        (
            self.pba_bar,
            u64::from(self.pba_offset),
            msix::pba_len(self.table_size),
        )
    }
}

impl ConfigSpace {
    /// Walks the capability list from the capabilities pointer; empty if
    /// the status register says there is none. A list that loops ends
    /// after as many entries as could fit.
    pub fn capabilities(&self) -> CapabilityIter<'_> {
        let has_list = self.status().0 & Status::CAPABILITIES_LIST != 0;
        CapabilityIter {
            config: self,
            next: if has_list {
                self.byte(reg::CAPABILITIES) & POINTER_MASK
            } else {
                0
            },
            left: MAX_CAPABILITIES,
        }
    }

    /// The offset of the first capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u16> {
        self.capabilities().find(|c| c.id == id).map(|c| c.offset)
    }

    /// Adds an MSI capability, disabled, and returns its offset. The guest
    /// may write the enable bit, the multiple message enable field, the
    /// address, the data and the mask bits of implemented vectors; the
    /// pending bits are the device's.
    pub fn add_msi(&mut self, msi: MsiConfig) -> Result<u16, ConfigError> {
        if !msi.vectors.is_power_of_two() || msi.vectors > 32 {
            return Err(ConfigError::InvalidCapability(
                "MSI vectors must be 1, 2, 4, 8, 16 or 32",
            ));
        }
        let layout = MsiLayout::new(msi.address_64bit, msi.per_vector_mask);
        let at = self.add_capability(CAP_ID_MSI, layout.len)?;
        let mut control = (msi.vectors.trailing_zeros() as u16) << 1;
        if msi.address_64bit {
            control |= msi::CONTROL_64BIT;
        }
        if msi.per_vector_mask {
            control |= msi::CONTROL_PER_VECTOR_MASK;
        }
        let control_writable = msi::CONTROL_ENABLE | msi::CONTROL_MME;
        self.define(
            at + msi::CONTROL,
            2,
            control.into(),
            control_writable.into(),
            0,
        );
        // Message addresses are dword aligned.
        self.define(at + msi::ADDRESS_LO, 4, 0, !0x3, 0);
        if let Some(hi) = layout.address_hi {
            self.define(at + hi, 4, 0, !0, 0);
        }
        self.define(at + layout.data, 2, 0, 0xffff, 0);
        if let Some(mask) = layout.mask {
            let implemented = u32::MAX >> (32 - u32::from(msi.vectors));
            self.define(at + mask, 4, 0, implemented, 0);
        }
        Ok(at)
    }

    /// Adds an MSI-X capability, disabled with no vector masked, and
    /// returns its offset. Only the enable and function mask bits are
    /// writable; the table and PBA are the device's to emulate in its BARs.
    pub fn add_msix(&mut self, msix: MsixConfig) -> Result<u16, ConfigError> {
        if msix.table_size == 0 || msix.table_size > MSIX_TABLE_SIZE + 1 {
            return Err(ConfigError::InvalidCapability(
                "MSI-X tables hold 1 to 2048 entries",
            ));
        }
        if msix.table_bar > 5 || msix.pba_bar > 5 {
            return Err(ConfigError::InvalidCapability(
                "MSI-X table and PBA must be in BARs 0 to 5",
            ));
        }
        if (msix.table_offset | msix.pba_offset) & MSIX_BIR != 0 {
            return Err(ConfigError::InvalidCapability(
                "MSI-X table and PBA offsets must be 8-byte aligned",
            ));
        }
        let at = self.add_capability(CAP_ID_MSIX, 12)?;
        let control = msix.table_size - 1;
        let writable = MSIX_ENABLE | MSIX_FUNCTION_MASK;
        self.define(at + 2, 2, control.into(), writable.into(), 0);
        let table = msix.table_offset | u32::from(msix.table_bar);
        self.define(at + 4, 4, table, 0, 0);
        let pba = msix.pba_offset | u32::from(msix.pba_bar);
        self.define(at + 8, 4, pba, 0, 0);
        Ok(at)
    }

    /// Adds a read-only vendor-specific capability holding `payload` after
    /// its length byte, and returns its offset.
    pub fn add_vendor_capability(&mut self, payload: &[u8]) -> Result<u16, ConfigError> {
        let len = payload.len() + 3;
        let at = self.add_capability(CAP_ID_VENDOR, len)?;
        // Fits in a byte: add_capability refused anything past 0x100.
        self.define(at + 2, 1, len as u32, 0, 0);
        for (offset, &b) in (at + 3..).zip(payload) {
            self.define(offset, 1, b.into(), 0, 0);
        }
        Ok(at)
    }

    /// Reserves `len` bytes for a capability, writes its ID, links it at
    /// the end of the list and returns its offset.
    fn add_capability(&mut self, id: u8, len: usize) -> Result<u16, ConfigError> {
        let at = self.next_capability;
        if usize::from(at) + len > CONFIG_SPACE_SIZE {
            return Err(ConfigError::NoRoom { id, len, next: at });
        }
        self.define(at, 1, id.into(), 0, 0);
        self.define(at + 1, 1, 0, 0, 0);
        match self.last_capability {
            Some(last) => self.define(last + 1, 1, at.into(), 0, 0),
            None => {
                self.define(reg::CAPABILITIES, 1, at.into(), 0, 0);
                self.set_power_on_bits(reg::STATUS, Status::CAPABILITIES_LIST);
            }
        }
        self.last_capability = Some(at);
        // Rounded up: the next capability starts on a dword.
        self.next_capability = at + (len as u16).next_multiple_of(4);
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_header;

    fn config() -> ConfigSpace {
        ConfigSpace::new(&test_header())
    }

    const MSI: MsiConfig = MsiConfig {
        vectors: 4,
        address_64bit: true,
        per_vector_mask: true,
    };

    const MSIX: MsixConfig = MsixConfig {
        table_size: 16,
        table_bar: 2,
        table_offset: 0x2000,
        pba_bar: 2,
        pba_offset: 0x3000,
    };

    #[test]
    fn without_capabilities_the_list_is_empty_and_unadvertised() {
        let c = config();
        assert_eq!(c.status().0 & Status::CAPABILITIES_LIST, 0);
        assert_eq!(c.capabilities().count(), 0);
    }

    #[test]
    fn the_walk_follows_the_pointers_in_order() {
        let mut c = config();
        let vendor = c.add_vendor_capability(b"wasmvisor").unwrap();
        let msi = c.add_msi(MSI).unwrap();
        let msix = c.add_msix(MSIX).unwrap();
        assert_eq!((vendor, msi, msix), (0x40, 0x4c, 0x64));
        assert_ne!(c.status().0 & Status::CAPABILITIES_LIST, 0);
        assert_eq!(c.byte(reg::CAPABILITIES), 0x40);
        let list: Vec<(u8, u16)> = c.capabilities().map(|c| (c.id, c.offset)).collect();
        assert_eq!(
            list,
            [
                (CAP_ID_VENDOR, 0x40),
                (CAP_ID_MSI, 0x4c),
                (CAP_ID_MSIX, 0x64)
            ]
        );
        assert_eq!(c.find_capability(CAP_ID_MSIX), Some(0x64));
        assert_eq!(c.find_capability(0x10), None);
        // The vendor capability: ID, next, length, payload.
        assert_eq!(c.read(0x40, 4), u32::from_le_bytes([0x09, 0x4c, 12, b'w']));
        // The list survives reset, and guests cannot rewrite it.
        c.write(reg::CAPABILITIES, 1, 0x80);
        c.write(0x41, 1, 0);
        c.reset();
        assert_eq!(c.capabilities().count(), 3);
    }

    #[test]
    fn a_looping_or_misaligned_list_still_ends() {
        let mut c = config();
        c.add_msi(MSI).unwrap();
        // Point the capability at itself, with reserved low bits set.
        c.set_byte(0x41, 0x43);
        assert_eq!(c.capabilities().count(), MAX_CAPABILITIES);
        assert!(c.capabilities().all(|cap| cap.offset == 0x40));
        // A pointer into the header ends the list.
        c.set_byte(0x41, 0x3c);
        assert_eq!(c.capabilities().count(), 1);
    }

    #[test]
    fn the_msi_control_register_says_what_the_device_supports() {
        let mut c = config();
        let at = c.add_msi(MSI).unwrap();
        // MMC = log2(4) = 2, 64-bit, per-vector masking.
        assert_eq!(c.word(at + 2), 2 << 1 | 1 << 7 | 1 << 8);
        c.write(at + 2, 2, 0xffff);
        assert_eq!(c.word(at + 2), 2 << 1 | 1 << 7 | 1 << 8 | 0x71);
        c.write(at + 4, 4, 0xffff_ffff);
        assert_eq!(c.dword(at + 4), 0xffff_fffc);
        assert_eq!(
            c.add_msi(MsiConfig { vectors: 3, ..MSI }),
            Err(ConfigError::InvalidCapability(
                "MSI vectors must be 1, 2, 4, 8, 16 or 32"
            ))
        );
    }

    #[test]
    fn msix_reads_back_its_table_and_pba_and_only_enable_and_mask_change() {
        let mut c = config();
        let at = c.add_msix(MSIX).unwrap();
        c.write(at + 2, 2, 0xffff);
        c.write(at + 4, 4, 0);
        let info = MsixInfo::read(&c, at);
        assert_eq!(
            info,
            MsixInfo {
                table_size: 16,
                table_bar: 2,
                table_offset: 0x2000,
                pba_bar: 2,
                pba_offset: 0x3000,
                enabled: true,
                function_masked: true,
            }
        );
        for bad in [
            MsixConfig {
                table_size: 0,
                ..MSIX
            },
            MsixConfig {
                table_size: 2049,
                ..MSIX
            },
            MsixConfig { pba_bar: 6, ..MSIX },
            MsixConfig {
                table_offset: 0x2004,
                ..MSIX
            },
        ] {
            assert!(c.add_msix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn capabilities_that_do_not_fit_are_refused() {
        let mut c = config();
        let big = [0u8; 0xb0];
        assert_eq!(c.add_vendor_capability(&big), Ok(0x40));
        assert_eq!(
            c.add_msi(MSI),
            Err(ConfigError::NoRoom {
                id: CAP_ID_MSI,
                len: 24,
                next: 0xf4
            })
        );
        assert_eq!(c.add_vendor_capability(&[]), Ok(0xf4));
        assert!(c.add_vendor_capability(&[0; 300]).is_err());
    }
}

//! MSI-X: the table of per-vector messages and masks and the pending bit
//! array (PBA), which live in BAR memory rather than configuration space,
//! and what it means to raise a vector.
//!
//! The capability's enable and function mask bits stay in configuration
//! space. [`Msix`] reads them from there and [`MsixTable`] takes them as an
//! [`MsixInfo`], so neither keeps a copy to fall out of step with guest
//! writes.
//!
//! A device builds its capability with [`ConfigSpace::add_msix`], keeps an
//! [`Msix`] and an [`MsixTable`], and traps the BAR byte ranges that
//! [`MsixInfo::table_range`] and [`MsixInfo::pba_range`] name instead of
//! mapping them, handing the accesses to the table. After every guest
//! write to the table or to the capability's control word, it delivers
//! what [`MsixTable::take_unmasked`] returns, because unmasking is what
//! releases a pending vector. Like MSI, MSI-X messages are memory writes,
//! so a device checks the command register's bus master bit itself before
//! sending.

use crate::all_ones;
use crate::capability::{MsixInfo, CAP_ID_MSIX};
use crate::config::ConfigSpace;
use crate::msi::{MsiMessage, MsiSignal};

/// Bytes in one table entry: address low, address high, data, vector
/// control.
pub(crate) const ENTRY_SIZE: u64 = 16;
/// The dword of an entry holding the low message address.
const ADDRESS_LO: usize = 0;
/// The dword of an entry holding the high message address.
const ADDRESS_HI: usize = 1;
/// The dword of an entry holding the message data.
const DATA: usize = 2;
/// The dword of an entry holding the vector control.
const VECTOR_CONTROL: usize = 3;
/// Vector control: the vector is masked. The other bits are reserved.
const VECTOR_MASKED: u32 = 1 << 0;
/// Message addresses are dword aligned, so their low two bits read 0, as
/// in the MSI capability.
const ADDRESS_LO_WRITABLE: u32 = !0x3;
/// What an entry holds at reset: masked, everything else zero.
const RESET_ENTRY: [u32; 4] = [0, 0, 0, VECTOR_MASKED];

/// Bytes of PBA for `table_size` vectors: one bit each, in whole qwords.
pub(crate) fn pba_len(table_size: u16) -> u64 {
    u64::from(table_size).div_ceil(64) * 8
}

/// An MSI-X capability in a configuration space: like [`Msi`], a view
/// that reads the guest-programmed control bits each time.
///
/// [`Msi`]: crate::Msi
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msix {
    offset: u16,
}

impl Msix {
    /// The MSI-X capability of `config`, if it has one.
    pub fn find(config: &ConfigSpace) -> Option<Msix> {
        config.find_capability(CAP_ID_MSIX).map(Msix::at)
    }

    /// The MSI-X capability at `offset`. Unlike MSI nothing about its
    /// layout varies, so there is nothing to read yet.
    pub fn at(offset: u16) -> Msix {
        Msix { offset }
    }

    /// Where the capability starts.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// The capability's fields as they are now; what [`MsixTable`]'s
    /// methods take.
    pub fn info(&self, config: &ConfigSpace) -> MsixInfo {
        MsixInfo::read(config, self.offset)
    }

    /// True once the guest set the enable bit.
    pub fn is_enabled(&self, config: &ConfigSpace) -> bool {
        self.info(config).enabled
    }

    /// True while the guest masks every vector at once.
    pub fn is_function_masked(&self, config: &ConfigSpace) -> bool {
        self.info(config).function_masked
    }
}

/// The guest-visible MSI-X state that lives in BAR memory: the table (one
/// 16-byte entry per vector: message address low and high, data, vector
/// control) and the PBA (one bit per vector in 64-bit qwords).
///
/// Guests access both with aligned 4- or 8-byte reads and writes, as the
/// PCI specification requires; other accesses read all-ones and writes of
/// them are dropped, since the specification leaves them undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixTable {
    entries: Vec<[u32; 4]>,
    pba: Vec<u64>,
}

impl MsixTable {
    /// A table of `table_size` entries in their reset state. The size is
    /// the one given to [`ConfigSpace::add_msix`], which bounds it to
    /// 1..=2048.
    pub fn new(table_size: u16) -> MsixTable {
        MsixTable {
            entries: vec![RESET_ENTRY; usize::from(table_size)],
            pba: vec![0; (pba_len(table_size) / 8) as usize],
        }
    }

    /// The number of entries (vectors).
    pub fn table_size(&self) -> u16 {
        // new() took the length as a u16.
        self.entries.len() as u16
    }

    /// The table's length in bytes: 16 per entry.
    pub fn table_len_bytes(&self) -> u64 {
        u64::from(self.table_size()) * ENTRY_SIZE
    }

    /// The PBA's length in bytes: one bit per vector, rounded up to whole
    /// qwords.
    pub fn pba_len_bytes(&self) -> u64 {
        pba_len(self.table_size())
    }

    /// Puts every entry back to masked with zero address and data, and
    /// clears every pending bit, as a function-level reset does.
    pub fn reset(&mut self) {
        self.entries.fill(RESET_ENTRY);
        self.pba.fill(0);
    }

    /// A guest read of `size` bytes at `offset` in the table; an 8-byte
    /// read returns two dwords of one entry, the lower offset in the low
    /// half.
    pub fn table_read(&self, offset: u64, size: u8) -> u64 {
        match first_dword(offset, size, self.table_len_bytes()) {
            Some(i) => read_dwords(i, size, |d| self.entries[d / 4][d % 4]),
            None => all_ones(size),
        }
    }

    /// A guest write of the low `size` bytes of `value` at `offset` in the
    /// table. Only the mask bit of vector control is writable; the
    /// reserved bits stay 0 so that the guest reads back what the device
    /// implements.
    pub fn table_write(&mut self, offset: u64, size: u8, value: u64) {
        let Some(first) = first_dword(offset, size, self.table_len_bytes()) else {
            return;
        };
        let dwords = [value as u32, (value >> 32) as u32];
        for (d, v) in (first..).zip(dwords).take(usize::from(size / 4)) {
            let field = d % 4;
            self.entries[d / 4][field] = match field {
                ADDRESS_LO => v & ADDRESS_LO_WRITABLE,
                VECTOR_CONTROL => v & VECTOR_MASKED,
                _ => v,
            };
        }
    }

    /// A guest read of `size` bytes at `offset` in the PBA. The PBA is the
    /// device's: guest writes to it are undefined and a device drops them,
    /// so there is no `pba_write`.
    pub fn pba_read(&self, offset: u64, size: u8) -> u64 {
        match first_dword(offset, size, self.pba_len_bytes()) {
            Some(i) => read_dwords(i, size, |d| (self.pba[d / 2] >> (32 * (d % 2))) as u32),
            None => all_ones(size),
        }
    }

    /// The message the guest programmed for `vector`; `None` beyond the
    /// table.
    pub fn message(&self, vector: u32) -> Option<MsiMessage> {
        let entry = self.entry(vector)?;
        Some(MsiMessage {
            address: u64::from(entry[ADDRESS_HI]) << 32 | u64::from(entry[ADDRESS_LO]),
            data: entry[DATA],
        })
    }

    /// True if `vector` may not be sent now: its own mask bit or the
    /// function mask is set. A vector beyond the table is never sent, so
    /// it counts as masked.
    pub fn is_masked(&self, info: &MsixInfo, vector: u32) -> bool {
        info.function_masked || self.is_entry_masked(vector)
    }

    /// True if `vector` was raised while masked and not delivered yet.
    pub fn is_pending(&self, vector: u32) -> bool {
        self.entry(vector).is_some() && self.pba[vector as usize / 64] & pba_bit(vector) != 0
    }

    /// Raises `vector`: the message to send, or its pending bit set if it
    /// is masked. `info` is the capability as it is now
    /// ([`Msix::info`]).
    pub fn signal(&mut self, info: &MsixInfo, vector: u32) -> MsiSignal {
        if !info.enabled {
            return MsiSignal::Disabled;
        }
        let Some(message) = self.message(vector) else {
            return MsiSignal::NoSuchVector;
        };
        if self.is_masked(info, vector) {
            self.pba[vector as usize / 64] |= pba_bit(vector);
            return MsiSignal::Pending;
        }
        MsiSignal::Send(message)
    }

    /// The messages of the vectors that are pending and no longer masked,
    /// lowest vector first; their pending bits are cleared, so each goes
    /// out once. Nothing while MSI-X is disabled or the function is
    /// masked: the bits stay pending for a later call.
    pub fn take_unmasked(&mut self, info: &MsixInfo) -> Vec<MsiMessage> {
        if !info.enabled || info.function_masked {
            return Vec::new();
        }
        let mut sent = Vec::new();
        for q in 0..self.pba.len() {
            let mut bits = self.pba[q];
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                let vector = q as u32 * 64 + bit;
                if self.is_entry_masked(vector) {
                    continue;
                }
                if let Some(message) = self.message(vector) {
                    self.pba[q] &= !(1 << bit);
                    sent.push(message);
                }
            }
        }
        sent
    }

    fn entry(&self, vector: u32) -> Option<&[u32; 4]> {
        self.entries.get(usize::try_from(vector).ok()?)
    }

    fn is_entry_masked(&self, vector: u32) -> bool {
        self.entry(vector)
            .is_none_or(|e| e[VECTOR_CONTROL] & VECTOR_MASKED != 0)
    }
}

/// `vector`'s bit in its PBA qword.
fn pba_bit(vector: u32) -> u64 {
    1 << (vector % 64)
}

/// The index of the first dword of an access of `size` bytes at `offset`
/// in a region of `len` bytes, if it is an aligned 4- or 8-byte access
/// that fits.
fn first_dword(offset: u64, size: u8, len: u64) -> Option<usize> {
    let size = u64::from(size);
    let fits = offset.checked_add(size).is_some_and(|end| end <= len);
    (matches!(size, 4 | 8) && offset.is_multiple_of(size) && fits)
        .then(|| usize::try_from(offset / 4).ok())
        .flatten()
}

/// One dword from `first`, or two for an 8-byte access.
fn read_dwords(first: usize, size: u8, dword: impl Fn(usize) -> u32) -> u64 {
    let lo = u64::from(dword(first));
    if size == 8 {
        lo | u64::from(dword(first + 1)) << 32
    } else {
        lo
    }
}

/// MSI-X as a device emulates it: the capability view and the table and
/// PBA behind it, answering the BAR accesses that land in them. Emulated
/// devices and passthrough functions (whose guest-visible table is the
/// VMM's, not the device's) both use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixEmulation {
    msix: Msix,
    table: MsixTable,
}

/// Where `offset..offset + size` lies inside `range` (bar, start, len) of
/// BAR `bar`: its offset from the range's start.
fn inside(range: (u8, u64, u64), bar: u8, offset: u64, size: u8) -> Option<u64> {
    let (range_bar, start, len) = range;
    let rel = offset.checked_sub(start)?;
    (range_bar == bar && rel.checked_add(u64::from(size))? <= len).then_some(rel)
}

impl MsixEmulation {
    /// The table for the capability `msix` of `config`, in its reset state.
    pub fn new(config: &ConfigSpace, msix: Msix) -> MsixEmulation {
        MsixEmulation {
            msix,
            table: MsixTable::new(msix.info(config).table_size),
        }
    }

    /// The capability.
    pub fn msix(&self) -> Msix {
        self.msix
    }

    /// The table.
    pub fn table(&self) -> &MsixTable {
        &self.table
    }

    /// The BAR byte ranges, as (bar, offset, len), that must stay trapped:
    /// the table and the PBA.
    pub fn trapped(&self, config: &ConfigSpace) -> [(u8, u64, u64); 2] {
        let info = self.msix.info(config);
        [info.table_range(), info.pba_range()]
    }

    /// A guest read of BAR `bar`: the value, if it lands in the table or
    /// the PBA.
    pub fn bar_read(&self, config: &ConfigSpace, bar: u8, offset: u64, size: u8) -> Option<u64> {
        let [table, pba] = self.trapped(config);
        if let Some(rel) = inside(table, bar, offset, size) {
            return Some(self.table.table_read(rel, size));
        }
        inside(pba, bar, offset, size).map(|rel| self.table.pba_read(rel, size))
    }

    /// A guest write of BAR `bar`: true if it landed in the table or the
    /// PBA (whose writes are dropped). Deliver
    /// [`MsixEmulation::take_unmasked`] after it.
    pub fn bar_write(
        &mut self,
        config: &ConfigSpace,
        bar: u8,
        offset: u64,
        size: u8,
        value: u64,
    ) -> bool {
        let [table, pba] = self.trapped(config);
        if let Some(rel) = inside(table, bar, offset, size) {
            self.table.table_write(rel, size, value);
            return true;
        }
        inside(pba, bar, offset, size).is_some()
    }

    /// True once the guest set the enable bit.
    pub fn is_enabled(&self, config: &ConfigSpace) -> bool {
        self.msix.is_enabled(config)
    }

    /// True if `vector` is masked, by itself or by the function mask.
    pub fn is_masked(&self, config: &ConfigSpace, vector: u32) -> bool {
        self.table.is_masked(&self.msix.info(config), vector)
    }

    /// The message of `vector`, if the table has it.
    pub fn message(&self, vector: u32) -> Option<MsiMessage> {
        self.table.message(vector)
    }

    /// Raises `vector`; see [`MsixTable::signal`].
    pub fn signal(&mut self, config: &ConfigSpace, vector: u32) -> MsiSignal {
        self.table.signal(&self.msix.info(config), vector)
    }

    /// The pending vectors no longer masked; see
    /// [`MsixTable::take_unmasked`].
    pub fn take_unmasked(&mut self, config: &ConfigSpace) -> Vec<MsiMessage> {
        self.table.take_unmasked(&self.msix.info(config))
    }

    /// Back to the reset state: every entry masked, nothing pending.
    pub fn reset(&mut self) {
        self.table.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::MsixConfig;
    use crate::config::test_header;

    /// The capability's control word, relative to it.
    const CONTROL: u16 = 2;
    const ENABLE: u32 = 1 << 15;
    const FUNCTION_MASK: u32 = 1 << 14;

    fn config(table_size: u16) -> (ConfigSpace, Msix, MsixTable) {
        let mut c = ConfigSpace::new(&test_header());
        c.add_msix(MsixConfig {
            table_size,
            table_bar: 1,
            table_offset: 0x1000,
            pba_bar: 1,
            pba_offset: 0x1800,
        })
        .unwrap();
        let msix = Msix::find(&c).unwrap();
        (c, msix, MsixTable::new(table_size))
    }

    fn set_control(c: &mut ConfigSpace, msix: &Msix, bits: u32) {
        c.write(msix.offset() + CONTROL, 2, bits);
    }

    /// Programs entry `vector` with 4-byte writes, leaving it masked or
    /// not.
    fn program(t: &mut MsixTable, vector: u64, address: u64, data: u32, masked: bool) {
        let at = vector * ENTRY_SIZE;
        t.table_write(at, 4, address & 0xffff_ffff);
        t.table_write(at + 4, 4, address >> 32);
        t.table_write(at + 8, 4, data.into());
        t.table_write(at + 12, 4, u64::from(masked));
    }

    fn message(address: u64, data: u32) -> MsiMessage {
        MsiMessage { address, data }
    }

    #[test]
    fn at_reset_every_entry_is_masked_and_nothing_is_pending() {
        let t = MsixTable::new(3);
        assert_eq!(
            (t.table_size(), t.table_len_bytes(), t.pba_len_bytes()),
            (3, 48, 8)
        );
        for v in 0..3 {
            let at = u64::from(v) * ENTRY_SIZE;
            assert_eq!(t.table_read(at, 8), 0);
            assert_eq!(t.table_read(at + 8, 8), 1 << 32);
            assert_eq!(t.table_read(at + 12, 4), 1);
            assert!(!t.is_pending(v));
            assert_eq!(t.message(v), Some(message(0, 0)));
        }
        assert_eq!(t.pba_read(0, 8), 0);
        assert_eq!(MsixTable::new(64).pba_len_bytes(), 8);
        assert_eq!(MsixTable::new(65).pba_len_bytes(), 16);
        assert_eq!(MsixTable::new(2048).pba_len_bytes(), 256);
    }

    #[test]
    fn entries_programmed_with_dword_writes_read_back_as_dwords_and_qwords() {
        let mut t = MsixTable::new(4);
        program(&mut t, 2, 0x1_fee0_3000, 0x4041, false);
        assert_eq!(t.table_read(0x20, 4), 0xfee0_3000);
        assert_eq!(t.table_read(0x24, 4), 1);
        assert_eq!(t.table_read(0x28, 4), 0x4041);
        assert_eq!(t.table_read(0x2c, 4), 0);
        assert_eq!(t.table_read(0x20, 8), 0x1_fee0_3000);
        assert_eq!(t.table_read(0x28, 8), 0x4041);
        assert_eq!(t.message(2), Some(message(0x1_fee0_3000, 0x4041)));
        // The neighbours are untouched.
        assert_eq!(t.table_read(0x1c, 4), 1);
        assert_eq!(t.table_read(0x30, 4), 0);
    }

    #[test]
    fn entries_programmed_with_qword_writes_read_back_as_dwords() {
        let mut t = MsixTable::new(4);
        t.table_write(0x30, 8, 0x0000_0002_fee0_1000);
        // Data in the low half, vector control (unmasked) in the high half.
        t.table_write(0x38, 8, 0x0000_0000_0000_0051);
        assert_eq!(t.table_read(0x30, 4), 0xfee0_1000);
        assert_eq!(t.table_read(0x34, 4), 2);
        assert_eq!(t.table_read(0x38, 4), 0x51);
        assert_eq!(t.table_read(0x3c, 4), 0);
        assert_eq!(t.message(3), Some(message(0x2_fee0_1000, 0x51)));
        t.table_write(0x38, 8, 1 << 32 | 0x52);
        assert_eq!(t.table_read(0x38, 8), 1 << 32 | 0x52);
    }

    #[test]
    fn reserved_vector_control_and_address_bits_read_0() {
        let mut t = MsixTable::new(1);
        t.table_write(12, 4, 0xffff_ffff);
        assert_eq!(t.table_read(12, 4), 1);
        t.table_write(8, 8, 0xffff_fffe_ffff_ffff);
        assert_eq!(t.table_read(8, 8), 0x0000_0000_ffff_ffff);
        // Messages are dword writes: the address's low two bits read 0.
        t.table_write(0, 8, u64::MAX);
        assert_eq!(t.table_read(0, 8), 0xffff_ffff_ffff_fffc);
    }

    #[test]
    fn unaligned_odd_sized_and_out_of_range_accesses_read_all_ones_and_drop_writes() {
        let mut t = MsixTable::new(2);
        program(&mut t, 0, 0xfee0_0000, 0x30, false);
        let before = t.clone();
        let bad: [(u64, u8); 9] = [
            (0, 1),
            (0, 2),
            (1, 4),
            (2, 4),
            (4, 8),
            (0, 3),
            (0, 16),
            (32, 4),
            (u64::MAX - 3, 4),
        ];
        for (offset, size) in bad {
            assert_eq!(
                t.table_read(offset, size),
                all_ones(size),
                "{offset} {size}"
            );
            assert_eq!(t.pba_read(offset, size), all_ones(size), "{offset} {size}");
            t.table_write(offset, size, 0);
        }
        assert_eq!(t, before);
        assert_eq!(t.table_read(0, 1), 0xff);
        assert_eq!(t.table_read(0, 2), 0xffff);
        assert_eq!(t.table_read(4, 8), u64::MAX);
        // The PBA is one qword here; past it is nothing.
        assert_eq!(t.pba_read(8, 4), 0xffff_ffff);
        assert_eq!(t.pba_read(4, 4), 0);
    }

    #[test]
    fn a_disabled_capability_sends_nothing_and_marks_nothing_pending() {
        let (mut c, msix, mut t) = config(4);
        program(&mut t, 0, 0xfee0_0000, 0x30, false);
        assert_eq!(t.signal(&msix.info(&c), 0), MsiSignal::Disabled);
        assert!(!t.is_pending(0));
        set_control(&mut c, &msix, ENABLE);
        assert_eq!(
            t.signal(&msix.info(&c), 0),
            MsiSignal::Send(message(0xfee0_0000, 0x30))
        );
        assert!(!t.is_pending(0));
    }

    #[test]
    fn a_masked_entry_is_held_pending_until_unmasked_and_sent_once() {
        let (mut c, msix, mut t) = config(70);
        set_control(&mut c, &msix, ENABLE);
        // Entry 65 is still masked from reset; its bit is in the second
        // qword of the PBA, bit 1.
        program(&mut t, 65, 0xfee0_0000, 0x61, true);
        let info = msix.info(&c);
        assert!(t.is_masked(&info, 65));
        assert_eq!(t.signal(&info, 65), MsiSignal::Pending);
        assert!(t.is_pending(65));
        assert_eq!(t.pba_read(8, 8), 0b10);
        assert_eq!(t.pba_read(8, 4), 0b10);
        assert_eq!(t.pba_read(12, 4), 0);
        assert_eq!(t.pba_read(0, 8), 0);
        assert!(t.take_unmasked(&info).is_empty());
        // Unmasking releases it, once.
        t.table_write(65 * ENTRY_SIZE + 12, 4, 0);
        assert!(!t.is_masked(&info, 65));
        assert_eq!(t.take_unmasked(&info), [message(0xfee0_0000, 0x61)]);
        assert!(!t.is_pending(65));
        assert_eq!(t.pba_read(8, 8), 0);
        assert!(t.take_unmasked(&info).is_empty());
    }

    #[test]
    fn the_function_mask_holds_every_vector_pending_until_cleared() {
        let (mut c, msix, mut t) = config(8);
        program(&mut t, 1, 0xfee0_0000, 0x41, false);
        program(&mut t, 6, 0xfee0_1000, 0x46, false);
        program(&mut t, 7, 0xfee0_2000, 0x47, true);
        set_control(&mut c, &msix, ENABLE | FUNCTION_MASK);
        let info = msix.info(&c);
        assert!(t.is_masked(&info, 1));
        for v in [6, 1, 7] {
            assert_eq!(t.signal(&info, v), MsiSignal::Pending);
        }
        assert_eq!(t.pba_read(0, 4), 1 << 1 | 1 << 6 | 1 << 7);
        // Raising a pending vector again still makes one message.
        assert_eq!(t.signal(&info, 1), MsiSignal::Pending);
        assert!(t.take_unmasked(&info).is_empty());
        // Disabling keeps them pending without sending.
        set_control(&mut c, &msix, FUNCTION_MASK);
        assert!(t.take_unmasked(&msix.info(&c)).is_empty());
        set_control(&mut c, &msix, 0);
        assert!(t.take_unmasked(&msix.info(&c)).is_empty());
        set_control(&mut c, &msix, ENABLE);
        let info = msix.info(&c);
        assert_eq!(
            t.take_unmasked(&info),
            [message(0xfee0_0000, 0x41), message(0xfee0_1000, 0x46)]
        );
        // Vector 7 keeps its own mask.
        assert_eq!(t.pba_read(0, 8), 1 << 7);
        assert!(t.take_unmasked(&info).is_empty());
        t.table_write(7 * ENTRY_SIZE + 12, 4, 0);
        assert_eq!(t.take_unmasked(&info), [message(0xfee0_2000, 0x47)]);
        assert_eq!(t.pba_read(0, 8), 0);
    }

    #[test]
    fn vectors_beyond_the_table_do_nothing() {
        let (mut c, msix, mut t) = config(4);
        set_control(&mut c, &msix, ENABLE);
        let info = msix.info(&c);
        for v in [4, 63, 64, u32::MAX] {
            assert_eq!(t.signal(&info, v), MsiSignal::NoSuchVector);
            assert!(!t.is_pending(v));
            assert!(t.is_masked(&info, v));
            assert_eq!(t.message(v), None);
        }
        assert_eq!(t.pba_read(0, 8), 0);
    }

    #[test]
    fn reset_masks_every_entry_and_clears_the_pba() {
        let (mut c, msix, mut t) = config(2);
        set_control(&mut c, &msix, ENABLE | FUNCTION_MASK);
        program(&mut t, 0, 0xfee0_0000, 0x30, false);
        program(&mut t, 1, 0xfee0_1000, 0x31, false);
        let info = msix.info(&c);
        assert_eq!(t.signal(&info, 1), MsiSignal::Pending);
        t.reset();
        assert_eq!(t, MsixTable::new(2));
        assert_eq!(t.table_read(16, 8), 0);
        assert_eq!(t.table_read(28, 4), 1);
        assert_eq!(t.pba_read(0, 8), 0);
    }

    #[test]
    fn the_guest_sets_enable_and_function_mask_in_configuration_space() {
        let (mut c, msix, _) = config(16);
        assert_eq!(msix.offset(), 0x40);
        assert!(!msix.is_enabled(&c) && !msix.is_function_masked(&c));
        // Every other control bit is read-only: the table size stays.
        c.write(msix.offset() + CONTROL, 2, 0xffff);
        assert!(msix.is_enabled(&c) && msix.is_function_masked(&c));
        assert_eq!(c.word(msix.offset() + CONTROL), 0xc000 | 15);
        assert_eq!(msix.info(&c).table_size, 16);
        set_control(&mut c, &msix, FUNCTION_MASK);
        assert!(!msix.is_enabled(&c) && msix.is_function_masked(&c));
        // A dword write at the capability reaches the control word too.
        c.write(msix.offset(), 4, ENABLE << 16);
        assert!(msix.is_enabled(&c) && !msix.is_function_masked(&c));
        c.reset();
        assert!(!msix.is_enabled(&c));
        let info = msix.info(&c);
        assert_eq!(info.table_range(), (1, 0x1000, 16 * ENTRY_SIZE));
        assert_eq!(info.pba_range(), (1, 0x1800, 8));
        assert_eq!(Msix::find(&ConfigSpace::new(&test_header())), None);
    }
}

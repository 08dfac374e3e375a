//! MSI: the capability's runtime state (enable, vectors, address and data,
//! per-vector mask and pending bits) and what it means to raise a vector,
//! plus the decoding of an MSI message into what an x86 interrupt route
//! needs. The VMM delivers messages through `KVM_SIGNAL_MSI` or an irqfd
//! with an MSI GSI route; both take the raw address and data, and the
//! decoded [`MsiRoute`] is for checking and showing them.

use thiserror::Error;

use crate::capability::CAP_ID_MSI;
use crate::config::ConfigSpace;

/// The control register, relative to the capability.
pub(crate) const CONTROL: u16 = 2;
/// The message address (low 32 bits).
pub(crate) const ADDRESS_LO: u16 = 4;
/// Control: MSI enable.
pub(crate) const CONTROL_ENABLE: u16 = 1 << 0;
/// Control: multiple message capable, log2 of the vectors, bits 3:1.
const CONTROL_MMC_SHIFT: u16 = 1;
/// Control: multiple message enable, log2 of the vectors, bits 6:4.
pub(crate) const CONTROL_MME_SHIFT: u16 = 4;
/// Control: the multiple message enable field.
pub(crate) const CONTROL_MME: u16 = 0x7 << CONTROL_MME_SHIFT;
/// Control: 64-bit message address.
pub(crate) const CONTROL_64BIT: u16 = 1 << 7;
/// Control: per-vector masking.
pub(crate) const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

/// Where the registers after the address sit: they move with the address
/// width and the presence of masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MsiLayout {
    pub address_hi: Option<u16>,
    pub data: u16,
    pub mask: Option<u16>,
    pub pending: Option<u16>,
    /// The capability's length in bytes.
    pub len: usize,
}

impl MsiLayout {
    pub(crate) fn new(address_64bit: bool, per_vector_mask: bool) -> MsiLayout {
        let (address_hi, data) = if address_64bit {
            (Some(8), 0x0c)
        } else {
            (None, 0x08)
        };
        // Mask and pending follow the data register's dword.
        let (mask, pending, len) = if per_vector_mask {
            (Some(data + 4), Some(data + 8), usize::from(data) + 12)
        } else {
            (None, None, usize::from(data) + 2)
        };
        MsiLayout {
            address_hi,
            data,
            mask,
            pending,
            len,
        }
    }
}

/// An MSI message: the DWORD write to `address` with `data` that a device
/// makes to interrupt a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// The address written, 0xFEEx_xxxx on x86.
    pub address: u64,
    /// The data written: vector and delivery mode on x86.
    pub data: u32,
}

/// Address bits 31:20 of every x86 MSI.
const INTERRUPT_ADDRESS_BASE: u64 = 0xfee;

impl MsiMessage {
    /// The low 32 bits of the address (`kvm_msi.address_lo`).
    pub fn address_lo(&self) -> u32 {
        self.address as u32
    }

    /// The high 32 bits of the address (`kvm_msi.address_hi`).
    pub fn address_hi(&self) -> u32 {
        (self.address >> 32) as u32
    }

    /// Decodes the message as an x86 LAPIC interrupt (Intel SDM vol. 3,
    /// "Message Signalled Interrupts").
    ///
    /// The destination takes bits 7:0 from address bits 19:12, bits 14:8
    /// from address bits 11:5 (KVM's extended destination ID, zero unless a
    /// guest uses it) and bits 31:8 from the high address (KVM's 32-bit
    /// x2APIC IDs). An address outside 0xFEE0_0000..0xFEF0_0000 is not an
    /// interrupt but a memory write.
    pub fn route(&self) -> Result<MsiRoute, MsiError> {
        let lo = u64::from(self.address_lo());
        let hi = self.address_hi();
        if lo >> 20 != INTERRUPT_ADDRESS_BASE || hi & 0xff != 0 {
            return Err(MsiError::NotInterruptAddress {
                address: self.address,
            });
        }
        let mode = ((self.data >> 8) & 0x7) as u8;
        let delivery_mode = match mode {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            _ => return Err(MsiError::ReservedDeliveryMode { mode }),
        };
        let destination = ((lo >> 12) & 0xff) as u32 | (((lo >> 5) & 0x7f) as u32) << 8 | hi;
        Ok(MsiRoute {
            destination,
            vector: self.data as u8,
            delivery_mode,
            logical_destination: lo & (1 << 2) != 0,
            redirection_hint: lo & (1 << 3) != 0,
            level_triggered: self.data & (1 << 15) != 0,
        })
    }
}

/// How the LAPIC treats an MSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// Deliver the vector to every destination.
    Fixed,
    /// Deliver the vector to the lowest-priority destination.
    LowestPriority,
    /// A system management interrupt.
    Smi,
    /// A non-maskable interrupt.
    Nmi,
    /// An INIT.
    Init,
    /// An 8259-style external interrupt.
    ExtInt,
}

/// An MSI message decoded for the x86 interrupt architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsiRoute {
    /// The destination APIC ID (physical) or logical destination.
    pub destination: u32,
    /// The interrupt vector.
    pub vector: u8,
    /// The delivery mode.
    pub delivery_mode: DeliveryMode,
    /// The destination is a logical one.
    pub logical_destination: bool,
    /// Lowest-priority redirection among the destinations is allowed.
    pub redirection_hint: bool,
    /// Level-triggered (edge otherwise).
    pub level_triggered: bool,
}

/// An MSI message that is not a valid x86 interrupt.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MsiError {
    /// The address is not in the LAPIC's interrupt range.
    #[error("MSI address {address:#x} is not in the interrupt range 0xfee00000-0xfeefffff")]
    NotInterruptAddress {
        /// The address.
        address: u64,
    },
    /// Delivery modes 3 and 6 are reserved.
    #[error("MSI delivery mode {mode} is reserved")]
    ReservedDeliveryMode {
        /// The mode field of the data.
        mode: u8,
    },
}

/// What raising an MSI vector came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiSignal {
    /// Deliver this message now.
    Send(MsiMessage),
    /// The vector is masked: its pending bit is now set, and the message
    /// goes out when it is unmasked.
    Pending,
    /// MSI is not enabled: the device should use INTx.
    Disabled,
    /// The vector is beyond those the guest enabled: nothing happens.
    NoSuchVector,
}

/// An MSI capability in a configuration space: a view that reads the
/// guest-programmed state from the registers each time, so there is no
/// copy to keep in step with guest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    offset: u16,
    layout: MsiLayout,
    /// log2 of the vectors the device supports.
    capable_log2: u16,
}

impl Msi {
    /// The MSI capability of `config`, if it has one.
    pub fn find(config: &ConfigSpace) -> Option<Msi> {
        config
            .find_capability(CAP_ID_MSI)
            .map(|offset| Msi::at(config, offset))
    }

    /// The MSI capability at `offset`; its read-only control bits say how
    /// it is laid out.
    pub fn at(config: &ConfigSpace, offset: u16) -> Msi {
        let control = config.word(offset + CONTROL);
        Msi {
            offset,
            layout: MsiLayout::new(
                control & CONTROL_64BIT != 0,
                control & CONTROL_PER_VECTOR_MASK != 0,
            ),
            capable_log2: (control >> CONTROL_MMC_SHIFT) & 0x7,
        }
    }

    /// Where the capability starts.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// True once the guest set the enable bit.
    pub fn is_enabled(&self, config: &ConfigSpace) -> bool {
        self.control(config) & CONTROL_ENABLE != 0
    }

    /// How many vectors the guest enabled: 1 << MME, never more than the
    /// device supports, whatever the guest wrote.
    pub fn vectors(&self, config: &ConfigSpace) -> u32 {
        let enabled = (self.control(config) & CONTROL_MME) >> CONTROL_MME_SHIFT;
        1 << enabled.min(self.capable_log2)
    }

    /// The message for `vector`: with several vectors enabled the device
    /// puts the vector number in the low bits of the data.
    pub fn message(&self, config: &ConfigSpace, vector: u32) -> MsiMessage {
        let lo = u64::from(config.dword(self.offset + ADDRESS_LO));
        let hi = self
            .layout
            .address_hi
            .map_or(0, |r| u64::from(config.dword(self.offset + r)));
        let low_bits = self.vectors(config) - 1;
        let data = u32::from(config.word(self.offset + self.layout.data));
        MsiMessage {
            address: hi << 32 | lo,
            data: (data & !low_bits) | (vector & low_bits),
        }
    }

    /// True if `vector`'s mask bit is set; always false without masking.
    pub fn is_masked(&self, config: &ConfigSpace, vector: u32) -> bool {
        self.bit(config, self.layout.mask, vector)
    }

    /// True if `vector` was raised while masked and not delivered yet.
    pub fn is_pending(&self, config: &ConfigSpace, vector: u32) -> bool {
        self.bit(config, self.layout.pending, vector)
    }

    /// Raises `vector`: a message to send, or its pending bit set if it is
    /// masked.
    pub fn signal(&self, config: &mut ConfigSpace, vector: u32) -> MsiSignal {
        if !self.is_enabled(config) {
            return MsiSignal::Disabled;
        }
        if vector >= self.vectors(config) {
            return MsiSignal::NoSuchVector;
        }
        if self.is_masked(config, vector) {
            self.set_pending(config, vector, true);
            return MsiSignal::Pending;
        }
        MsiSignal::Send(self.message(config, vector))
    }

    /// The messages of the vectors that are pending and no longer masked
    /// (call after a guest configuration write); their pending bits are
    /// cleared. Nothing while MSI is disabled.
    pub fn take_unmasked(&self, config: &mut ConfigSpace) -> Vec<MsiMessage> {
        if !self.is_enabled(config) {
            return Vec::new();
        }
        let ready: Vec<u32> = (0..self.vectors(config))
            .filter(|&v| self.is_pending(config, v) && !self.is_masked(config, v))
            .collect();
        ready
            .into_iter()
            .map(|v| {
                self.set_pending(config, v, false);
                self.message(config, v)
            })
            .collect()
    }

    fn control(&self, config: &ConfigSpace) -> u16 {
        config.word(self.offset + CONTROL)
    }

    fn bit(&self, config: &ConfigSpace, register: Option<u16>, vector: u32) -> bool {
        register.is_some_and(|r| vector < 32 && config.dword(self.offset + r) & (1 << vector) != 0)
    }

    fn set_pending(&self, config: &mut ConfigSpace, vector: u32, pending: bool) {
        let Some(r) = self.layout.pending else { return };
        let bits = config.dword(self.offset + r);
        let bits = if pending {
            bits | 1 << vector
        } else {
            bits & !(1 << vector)
        };
        config.set_dword(self.offset + r, bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::MsiConfig;
    use crate::config::test_header;

    fn config(vectors: u8, address_64bit: bool, per_vector_mask: bool) -> (ConfigSpace, Msi) {
        let mut c = ConfigSpace::new(&test_header());
        c.add_msi(MsiConfig {
            vectors,
            address_64bit,
            per_vector_mask,
        })
        .unwrap();
        let msi = Msi::find(&c).unwrap();
        (c, msi)
    }

    /// Programs the capability as a guest driver would.
    fn program(c: &mut ConfigSpace, msi: &Msi, address: u64, data: u16, mme: u16) {
        let at = msi.offset();
        c.write(at + ADDRESS_LO, 4, address as u32);
        if let Some(hi) = msi.layout.address_hi {
            c.write(at + hi, 4, (address >> 32) as u32);
        }
        c.write(at + msi.layout.data, 2, u32::from(data));
        let control = CONTROL_ENABLE | mme << CONTROL_MME_SHIFT;
        c.write(at + CONTROL, 2, u32::from(control));
    }

    #[test]
    fn nothing_is_sent_until_the_guest_enables_msi() {
        let (mut c, msi) = config(1, true, true);
        assert_eq!(msi.signal(&mut c, 0), MsiSignal::Disabled);
        program(&mut c, &msi, 0x1_fee0_1000, 0x41, 0);
        assert_eq!(
            msi.signal(&mut c, 0),
            MsiSignal::Send(MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41
            })
        );
        assert_eq!(msi.signal(&mut c, 1), MsiSignal::NoSuchVector);
    }

    #[test]
    fn a_32_bit_capability_ignores_the_high_address() {
        let (mut c, msi) = config(1, false, false);
        assert_eq!(msi.layout.data, 0x08);
        program(&mut c, &msi, 0xfee0_0000, 0x30, 0);
        assert_eq!(msi.message(&c, 0).address, 0xfee0_0000);
        // Without masking, writes to where a mask would be change nothing.
        c.write(msi.offset() + 0x0c, 4, 1);
        assert!(!msi.is_masked(&c, 0));
        assert!(matches!(msi.signal(&mut c, 0), MsiSignal::Send(_)));
    }

    #[test]
    fn several_vectors_put_the_vector_in_the_low_data_bits() {
        let (mut c, msi) = config(4, true, true);
        // The guest asks for 8 but the device supports 4.
        program(&mut c, &msi, 0xfee0_0000, 0x50, 3);
        assert_eq!(msi.vectors(&c), 4);
        let data = |v| match msi.signal(&mut c.clone(), v) {
            MsiSignal::Send(m) => m.data,
            other => panic!("{other:?}"),
        };
        assert_eq!([data(0), data(1), data(3)], [0x50, 0x51, 0x53]);
        let mut c2 = c.clone();
        assert_eq!(msi.signal(&mut c2, 4), MsiSignal::NoSuchVector);
    }

    #[test]
    fn a_masked_vector_is_held_pending_until_unmasked() {
        let (mut c, msi) = config(2, true, true);
        program(&mut c, &msi, 0xfee0_0000, 0x60, 1);
        let mask = msi.offset() + msi.layout.mask.unwrap();
        let pending = msi.offset() + msi.layout.pending.unwrap();
        c.write(mask, 4, 0b10);
        assert_eq!(msi.signal(&mut c, 1), MsiSignal::Pending);
        assert!(msi.is_pending(&c, 1));
        assert!(matches!(msi.signal(&mut c, 0), MsiSignal::Send(_)));
        // The guest cannot clear pending bits; unmasking sends the message.
        c.write(pending, 4, 0);
        assert!(msi.is_pending(&c, 1));
        assert!(msi.take_unmasked(&mut c).is_empty());
        c.write(mask, 4, 0);
        let sent = msi.take_unmasked(&mut c);
        assert_eq!(
            sent,
            [MsiMessage {
                address: 0xfee0_0000,
                data: 0x61
            }]
        );
        assert!(!msi.is_pending(&c, 1));
        assert!(msi.take_unmasked(&mut c).is_empty());
    }

    #[test]
    fn only_implemented_mask_bits_are_writable() {
        let (mut c, msi) = config(2, false, true);
        let mask = msi.offset() + msi.layout.mask.unwrap();
        c.write(mask, 4, 0xffff_ffff);
        assert_eq!(c.dword(mask), 0b11);
    }

    #[test]
    fn a_fixed_physical_message_decodes_to_apic_id_and_vector() {
        let m = MsiMessage {
            address: 0xfee0_3000,
            data: 0x0041,
        };
        assert_eq!(
            m.route(),
            Ok(MsiRoute {
                destination: 3,
                vector: 0x41,
                delivery_mode: DeliveryMode::Fixed,
                logical_destination: false,
                redirection_hint: false,
                level_triggered: false,
            })
        );
        assert_eq!((m.address_lo(), m.address_hi()), (0xfee0_3000, 0));
    }

    #[test]
    fn mode_bits_and_extended_destinations_decode() {
        // Logical, redirection hint, lowest priority, level.
        let r = MsiMessage {
            address: 0xfeef_f00c,
            data: 0x8000 | 1 << 8 | 0x22,
        }
        .route()
        .unwrap();
        assert_eq!(r.destination, 0xff);
        assert!(r.logical_destination && r.redirection_hint && r.level_triggered);
        assert_eq!(r.delivery_mode, DeliveryMode::LowestPriority);
        let nmi = MsiMessage {
            address: 0xfee0_0000,
            data: 4 << 8,
        };
        assert_eq!(nmi.route().unwrap().delivery_mode, DeliveryMode::Nmi);
        // Extended destination ID bits 11:5 and 32-bit x2APIC IDs.
        let ext = MsiMessage {
            address: 0xfee0_1000 | 0x7f << 5,
            data: 0,
        };
        assert_eq!(ext.route().unwrap().destination, 0x7f01);
        let x2 = MsiMessage {
            address: 0x0001_2300_fee0_0000,
            data: 0,
        };
        assert_eq!(x2.route().unwrap().destination, 0x0001_2300);
    }

    #[test]
    fn non_interrupt_addresses_and_reserved_modes_are_refused() {
        for address in [0xfed0_0000, 0xe800_0000, 0x0000_0001_fee0_0000] {
            let m = MsiMessage { address, data: 0 };
            assert_eq!(m.route(), Err(MsiError::NotInterruptAddress { address }));
        }
        for mode in [3u8, 6] {
            let m = MsiMessage {
                address: 0xfee0_0000,
                data: u32::from(mode) << 8,
            };
            assert_eq!(m.route(), Err(MsiError::ReservedDeliveryMode { mode }));
        }
        assert_eq!(
            MsiMessage {
                address: 0xe800_0000,
                data: 0
            }
            .route()
            .unwrap_err()
            .to_string(),
            "MSI address 0xe8000000 is not in the interrupt range 0xfee00000-0xfeefffff"
        );
    }
}

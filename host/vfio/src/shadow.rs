//! The guest's view of a passed-through function's configuration space:
//! built once from the device's own, with the BARs emulated (sizes from
//! the device's regions, addresses only in the shadow) and the capability
//! list filtered to what the VMM virtualizes. The guest never writes the
//! device's BAR or capability registers; only the command register goes
//! through (see `function`).

use thiserror::Error;
use wasmvisor_pci::{
    reg, Bar, BarError, ClassCode, ConfigError, ConfigSpace, Header, IntxPin, Msi, Msix, Status,
    CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_VENDOR, CONFIG_SPACE_SIZE,
};

use crate::passthrough::{IrqKind, PassthroughDevice, PassthroughError, CONFIG_REGION};

/// MSI control register, relative to the capability.
pub(crate) const MSI_CONTROL: u16 = 2;
/// MSI control: enable.
const MSI_ENABLE: u16 = 1 << 0;
/// MSI control: multiple message enable, bits 6:4.
const MSI_MME: u16 = 0x7 << 4;
/// MSI control: 64-bit address.
const MSI_64BIT: u16 = 1 << 7;
/// MSI-X control: enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X control: every vector masked.
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// The MSI-X capability: ID, next, control, table and PBA registers.
const MSIX_LEN: usize = 12;
/// MSI control: per-vector masking.
const MSI_PER_VECTOR_MASK: u16 = 1 << 8;
/// BAR register bit 0: I/O.
const BAR_IO: u32 = 0x1;
/// BAR register bits 2:1 = 0b10: 64-bit memory.
const BAR_TYPE_64: u32 = 0x4;
/// BAR register bit 3: prefetchable.
const BAR_PREFETCHABLE: u32 = 0x8;
/// The capabilities passed to the guest: MSI (emulated here, enabled on
/// the device through the backend's interrupt calls) and vendor-specific
/// ones (read-only copies), plus MSI-X when the backend has MSI-X vectors
/// (emulated the same way, its table and PBA by the function). Everything
/// else, power management and PCI Express included, is unlinked from the
/// list: the VMM would have to virtualize it, and a guest that sees it
/// would program the real registers.
const KEPT_CAPABILITIES: [u8; 2] = [CAP_ID_MSI, CAP_ID_VENDOR];

/// Why the shadow could not be built.
#[derive(Debug, Error)]
pub enum ShadowError {
    /// The device has no configuration region.
    #[error("the device has no configuration space region")]
    NoConfigRegion,
    /// Reading it failed.
    #[error("cannot read configuration space: {0}")]
    Read(#[source] PassthroughError),
    /// A BAR region has a size a BAR cannot have.
    #[error("BAR {index}: {source}")]
    Bar {
        /// The BAR.
        index: u8,
        /// Why.
        #[source]
        source: BarError,
    },
    /// The BAR could not be declared.
    #[error("BAR {index}: {source}")]
    Config {
        /// The BAR.
        index: u8,
        /// Why.
        #[source]
        source: ConfigError,
    },
}

/// The shadow and where its MSI capability is.
pub(crate) struct Shadow {
    pub config: ConfigSpace,
    pub msi: Option<Msi>,
    /// Where its MSI-X capability is, if the guest sees one.
    pub msix: Option<Msix>,
    /// The capability IDs the device has and the guest does not see.
    pub hidden: Vec<u8>,
}

/// Builds the shadow from `device`'s configuration region.
pub(crate) fn build(device: &dyn PassthroughDevice) -> Result<Shadow, ShadowError> {
    let info = device
        .region_info(CONFIG_REGION)
        .filter(|i| i.size > 0)
        .ok_or(ShadowError::NoConfigRegion)?;
    let len = CONFIG_SPACE_SIZE.min(info.size as usize);
    let mut raw = vec![0u8; CONFIG_SPACE_SIZE];
    device
        .region_read(CONFIG_REGION, 0, &mut raw[..len])
        .map_err(ShadowError::Read)?;
    let byte = |o: u16| raw[usize::from(o)];
    let word = |o: u16| u16::from_le_bytes([byte(o), byte(o + 1)]);
    let dword = |o: u16| u32::from(word(o)) | u32::from(word(o + 2)) << 16;

    let mut config = ConfigSpace::new(&Header {
        vendor_id: word(reg::VENDOR_ID),
        device_id: word(reg::DEVICE_ID),
        revision_id: byte(reg::REVISION_ID),
        class: ClassCode {
            base: byte(reg::CLASS_CODE + 2),
            sub: byte(reg::CLASS_CODE + 1),
            prog_if: byte(reg::CLASS_CODE),
        },
        subsystem_vendor_id: word(reg::SUBSYSTEM_VENDOR_ID),
        subsystem_id: word(reg::SUBSYSTEM_ID),
        interrupt_pin: IntxPin::from_register(byte(reg::INTERRUPT_PIN)),
        // Each passed-through function is a slot of its own.
        multifunction: false,
    });
    declare_bars(device, &mut config, dword)?;

    // The device's list, walked on a copy of its bytes.
    let mut original = config.clone();
    for (o, &b) in raw.iter().enumerate().skip(usize::from(reg::STATUS)) {
        original.set_byte(o as u16, b);
    }
    let mut kept = Vec::new();
    let mut hidden = Vec::new();
    // MSI-X is kept only if the backend can signal its vectors.
    let msix_capable = device.irq_count(IrqKind::Msix) > 0;
    for cap in original.capabilities() {
        if KEPT_CAPABILITIES.contains(&cap.id) || (cap.id == CAP_ID_MSIX && msix_capable) {
            kept.push(cap);
        } else {
            hidden.push(cap.id);
        }
    }
    let mut msi = None;
    let mut msix = None;
    for (i, cap) in kept.iter().enumerate() {
        let len = match cap.id {
            CAP_ID_MSI => msi_len(word(cap.offset + MSI_CONTROL)),
            CAP_ID_MSIX => MSIX_LEN,
            _ => usize::from(byte(cap.offset + 2)).max(3),
        };
        let end = (usize::from(cap.offset) + len).min(CONFIG_SPACE_SIZE);
        for (o, &b) in raw.iter().enumerate().take(end).skip(cap.offset.into()) {
            config.define(o as u16, 1, b.into(), 0, 0);
        }
        // Relink past the hidden capabilities.
        let next = kept.get(i + 1).map_or(0, |c| c.offset);
        config.define(cap.offset + 1, 1, next.into(), 0, 0);
        if cap.id == CAP_ID_MSI {
            define_msi(&mut config, cap.offset, word(cap.offset + MSI_CONTROL));
            msi = Some(Msi::at(&config, cap.offset));
        }
        if cap.id == CAP_ID_MSIX {
            // Off and unmasked at power-on; the guest writes only enable
            // and the function mask. Table size and locations are the
            // device's, read-only.
            let control = word(cap.offset + MSI_CONTROL) & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
            config.define(
                cap.offset + MSI_CONTROL,
                2,
                control.into(),
                (MSIX_ENABLE | MSIX_FUNCTION_MASK).into(),
                0,
            );
            msix = Some(Msix::at(cap.offset));
        }
    }
    if let Some(first) = kept.first() {
        config.define(reg::CAPABILITIES, 1, first.offset.into(), 0, 0);
        let status = Status::CAPABILITIES_LIST;
        config.define(
            reg::STATUS,
            2,
            status.into(),
            0,
            Status::WRITE_1_TO_CLEAR.into(),
        );
    }
    Ok(Shadow {
        config,
        msi,
        msix,
        hidden,
    })
}

/// Declares a BAR for each BAR region with a size, of the kind the
/// device's register says.
fn declare_bars(
    device: &dyn PassthroughDevice,
    config: &mut ConfigSpace,
    dword: impl Fn(u16) -> u32,
) -> Result<(), ShadowError> {
    let mut index = 0u8;
    while index < 6 {
        let size = device.region_info(index.into()).map_or(0, |info| info.size);
        let register = dword(reg::BAR0 + 4 * u16::from(index));
        if size == 0 {
            index += 1;
            continue;
        }
        let prefetchable = register & BAR_PREFETCHABLE != 0;
        let bar = if register & BAR_IO != 0 {
            Bar::io(size)
        } else if register & 0x6 == BAR_TYPE_64 {
            Bar::mmio64(size, prefetchable)
        } else {
            Bar::mmio32(size, prefetchable)
        }
        .map_err(|source| ShadowError::Bar { index, source })?;
        config
            .set_bar(index, bar)
            .map_err(|source| ShadowError::Config { index, source })?;
        index += if bar.is_64bit() { 2 } else { 1 };
    }
    Ok(())
}

/// The length of an MSI capability with `control`.
fn msi_len(control: u16) -> usize {
    let data = if control & MSI_64BIT != 0 { 0x0c } else { 0x08 };
    if control & MSI_PER_VECTOR_MASK != 0 {
        data + 12
    } else {
        data + 2
    }
}

/// Gives the MSI capability at `at` the guest-visible behaviour of an
/// emulated one: disabled at power-on, the guest writes enable, vectors,
/// address, data and masks; the pending bits are the VMM's.
fn define_msi(config: &mut ConfigSpace, at: u16, control: u16) {
    let control = control & !(MSI_ENABLE | MSI_MME);
    config.define(
        at + MSI_CONTROL,
        2,
        control.into(),
        (MSI_ENABLE | MSI_MME).into(),
        0,
    );
    config.define(at + 4, 4, 0, !0x3, 0);
    let data = if control & MSI_64BIT != 0 {
        config.define(at + 8, 4, 0, !0, 0);
        0x0c
    } else {
        0x08
    };
    config.define(at + data, 2, 0, 0xffff, 0);
    if control & MSI_PER_VECTOR_MASK != 0 {
        let vectors = 1u32 << ((control >> 1) & 0x7).min(5);
        let implemented = u32::MAX >> (32 - vectors);
        config.define(at + data + 4, 4, 0, implemented, 0);
        config.define(at + data + 8, 4, 0, 0, 0);
    }
}

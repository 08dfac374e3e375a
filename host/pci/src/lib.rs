//! wasmvisor's PCI segment, free of KVM: what a guest sees when it
//! enumerates PCI, and the seams through which devices answer.
//!
//! A [`PciBus`] is segment 0, bus 0: up to 32 devices, a [`HostBridge`] at
//! 00:00.0, configuration mechanism #1 at ports 0xCF8-0xCFF and an ECAM
//! window. Devices implement [`PciDevice`]; emulated ones keep their
//! registers in a [`ConfigSpace`], whose write masks implement BAR sizing
//! and the guest-visible rules of each register. A [`BarAllocator`] places
//! BARs in the windows of a [`PciLayout`]. Devices interrupt through an
//! [`InterruptSink`] (MSI messages, from [`Msi`] or an [`MsixTable`], or
//! INTx) and reach guest memory through [`DmaMemory`], so that everything
//! here is tested without a VM. A [`DmaDomain`] says which guest memory
//! devices may reach by DMA at all.
//!
//! The VMM owns the wiring: it routes the ports and MMIO windows of the
//! layout to the bus, delivers [`MsiMessage`]s through KVM and implements
//! [`DmaMemory`] over guest RAM.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bar;
mod bdf;
mod bus;
mod capability;
mod config;
mod device;
mod dma_window;
mod ecam;
mod host_bridge;
mod layout;
mod msi;
mod msix;
mod testdev;

pub use bar::{AddressSpace, AllocError, Bar, BarAllocator, BarError, BarKind, BarRegion};
pub use bdf::Bdf;
pub use bus::{BarRoute, BusError, PciBus, Target, DEFAULT_INTX_LINES, MAX_DEVICES};
pub use capability::{
    Capability, CapabilityIter, MsiConfig, MsixConfig, MsixInfo, CAP_ID_MSI, CAP_ID_MSIX,
    CAP_ID_VENDOR,
};
pub use config::{
    reg, ClassCode, Command, ConfigError, ConfigSpace, Header, IntxPin, Status, CONFIG_SPACE_SIZE,
    EXTENDED_CONFIG_SPACE_SIZE,
};
pub use device::{
    DirectMap, DmaError, DmaMemory, GuestMapping, Interrupt, InterruptError, InterruptSink,
    PciDevice, RecordedInterrupts,
};
pub use dma_window::{ConfinedDma, DmaDomain, DmaWindowError, DMA_PAGE_SIZE};
pub use ecam::{decode as ecam_decode, EcamAccess, ECAM_BUS_SIZE};
pub use host_bridge::{
    ConfigAddress, HostBridge, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, CONFIG_PORTS,
    HOST_BRIDGE_DEVICE_ID,
};
pub use layout::{LayoutError, PciLayout, Window, PLATFORM_RESERVED};
pub use msi::{DeliveryMode, Msi, MsiError, MsiMessage, MsiRoute, MsiSignal};
pub use msix::{Msix, MsixEmulation, MsixTable};
pub use testdev::{dma_pattern, TestDevice, TEST_DEVICE_ID};

/// The vendor ID of wasmvisor's own devices (the host bridge and the test
/// device): 0x5741, "WA". It is not in the PCI ID Repository (`pci.ids`)
/// and has not been obtained from the PCI-SIG; guests only ever see it
/// inside wasmvisor, where no vendor's driver binds to it by accident.
pub const VENDOR_ID: u16 = 0x5741;

/// What a read of `size` bytes that nothing answers returns: all-ones in
/// those bytes, as a master abort on PCI does; all 64 bits for a size that
/// is not 1, 2 or 4.
pub(crate) fn all_ones(size: u8) -> u64 {
    match size {
        1 | 2 | 4 => (1u64 << (8 * u32::from(size))) - 1,
        _ => u64::MAX,
    }
}

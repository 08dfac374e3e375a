//! PCI passthrough for wasmvisor: a passed-through device as a
//! `wasmvisor_pci::PciDevice` on the guest's bus.
//!
//! [`PassthroughDevice`] is the seam to whatever drives the device:
//! [`KernelVfio`] (kernel VFIO through vfio-ioctls: needs `/dev/vfio`),
//! [`VfioUserDevice`] (a device server in another process, over the
//! vfio-user protocol) and [`FakeDevice`] (tests). [`VfioPciFunction`]
//! virtualizes the device for the guest: a shadow configuration space
//! (BAR sizing and addresses emulated, capabilities filtered to MSI,
//! MSI-X and vendor-specific ones, only the command register forwarded),
//! mappable BAR areas offered for memslots and the rest trapped and
//! forwarded as region reads and writes, MSI and MSI-X emulated and
//! delivered from the device's eventfds through an [`IrqBypass`] (KVM
//! irqfds) or an `InterruptSink`, and reset on shutdown. [`KernelVfio`]
//! runs over [`VfioSys`], one method per VFIO ioctl, which [`FakeVfio`]
//! fakes in tests.
//!
//! [`TestDeviceServer`] serves `wasmvisor_pci::TestDevice` over vfio-user
//! (also as the `wasmvisor-vfio-user-testdev` binary), so the whole path,
//! DMA into guest memory included, runs where there is no VFIO.
//!
//! A vfio-user server maps guest RAM from the fd sent with each DMA map:
//! a VMM with vfio-user devices must back guest RAM with a memfd
//! ([`memfd_guest_memory`]) and map it with [`dma_map_guest_memory`].
#![warn(missing_docs)]

mod bypass;
mod fake;
mod function;
mod interrupts;
mod kernel;
mod memory;
mod passthrough;
mod server;
mod shadow;
mod user;

pub use bypass::{BypassCall, IrqBypass, RecordedBypass};
pub use fake::{FakeCall, FakeDevice};
pub use function::{FunctionError, VfioPciFunction};
pub use interrupts::{InterruptThread, Interrupts};
pub use kernel::{missing_support, sysfs_path, KernelVfio};
pub use kernel::{
    FakeRegion, FakeVfio, IoctlSys, IrqAction, SetIrqs, SysCall, SysOp, SysRegion, VfioSys,
};
pub use memory::{
    dma_map_guest_memory, dma_ranges, memfd, memfd_guest_memory, DmaAccess, GuestRam, MappedDma,
    MemoryError,
};
pub use passthrough::{
    usable_areas, DmaRange, IrqKind, MmapArea, PassthroughDevice, PassthroughError, RegionInfo,
    RegionMapping, CONFIG_REGION,
};
pub use server::{ServerError, TestDeviceBackend, TestDeviceServer, SHARED_BAR, SHARED_BAR_SIZE};
pub use shadow::ShadowError;
pub use user::VfioUserDevice;

//! `KernelVfio` against `FakeVfio`: its logic, with the VFIO syscalls
//! faked (vfio-ioctls fakes them only in its own test builds).

use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_memory::GuestAddress;
use wasmvisor_pci::{
    Bar, ClassCode, ConfigSpace, DmaDomain, Header, IntxPin, MsiConfig, PciDevice,
    RecordedInterrupts, Window,
};

use super::*;
use crate::memory::{dma_map_guest_memory, dma_ranges, memfd_guest_memory};
use crate::passthrough::CONFIG_REGION;
use crate::VfioPciFunction;

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
const RW_MMAP: u32 = RW | VFIO_REGION_INFO_FLAG_MMAP;
/// Where the config region is in the device file.
const CONFIG_AT: u64 = 0x70_0000;
const INTX: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_INTX_IRQ_INDEX;
const MSI: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_MSI_IRQ_INDEX;

fn area(offset: u64, size: u64) -> MmapArea {
    MmapArea { offset, size }
}

fn region(index: u32, flags: u32, size: u64, sparse_mmap: Option<Vec<MmapArea>>) -> FakeRegion {
    FakeRegion {
        index,
        flags,
        size,
        // Not the index << 40 of vfio-pci, but not the index either, so a
        // forgotten region offset shows.
        offset: (u64::from(index) + 1) * 0x10_0000,
        sparse_mmap,
    }
}

/// BAR 0: 16 KiB, mmappable in sparse areas, two of them unusable (not
/// whole pages; past the end). BAR 1: 8 KiB, mmappable whole. BAR 2:
/// 4 KiB, trapped. BAR 3: mmappable but smaller than a page. BAR 4:
/// size 0. BAR 5: mmappable with no sparse areas at all. Config space at
/// `CONFIG_AT`. INTx, 4 MSI vectors, no MSI-X.
fn fake() -> Arc<FakeVfio> {
    let mut regions = vec![
        region(
            0,
            RW_MMAP,
            0x4000,
            Some(vec![
                area(0, 0x1000),
                area(0x1800, 0x800),
                area(0x2000, 0x2000),
                area(0x3000, 0x2000),
            ]),
        ),
        region(1, RW_MMAP, 0x2000, None),
        region(2, RW, 0x1000, None),
        region(3, RW_MMAP, 0x100, None),
        region(4, RW, 0, None),
        region(5, RW_MMAP, 0x1000, Some(Vec::new())),
    ];
    regions.push(FakeRegion {
        offset: CONFIG_AT,
        ..region(CONFIG_REGION, RW, 256, None)
    });
    Arc::new(FakeVfio::new(regions, &[(INTX, 1), (MSI, 4)]).unwrap())
}

fn kernel_over(fake: &Arc<FakeVfio>) -> KernelVfio {
    KernelVfio::with_sys(Arc::clone(fake))
}

#[test]
fn region_info_is_the_devices() {
    let fake = fake();
    let k = kernel_over(&fake);
    assert_eq!(
        k.region_info(0),
        Some(RegionInfo {
            flags: RW_MMAP,
            size: 0x4000,
            offset: 0x10_0000,
        })
    );
    assert_eq!(
        k.region_info(CONFIG_REGION),
        Some(RegionInfo {
            flags: RW,
            size: 256,
            offset: CONFIG_AT,
        })
    );
    assert_eq!(k.region_info(4), None, "a region of size 0 is none");
    assert_eq!(k.region_info(6), None);
    assert_eq!(k.irq_count(IrqKind::Intx), 1);
    assert_eq!(k.irq_count(IrqKind::Msi), 4);
    assert_eq!(k.irq_count(IrqKind::Msix), 0);
    assert!(fake.take_calls().is_empty());
}

#[test]
fn accesses_land_at_the_region_offset_in_the_device_file() {
    let fake = fake();
    let k = kernel_over(&fake);
    k.region_write(2, 0x10, b"abcd").unwrap();
    let mut back = [0u8; 4];
    fake.peek(0x30_0010, &mut back).unwrap();
    assert_eq!(&back, b"abcd");

    fake.poke(0x30_0ffc, b"wxyz").unwrap();
    k.region_read(2, 0xffc, &mut back).unwrap();
    assert_eq!(&back, b"wxyz");
    assert_eq!(
        fake.take_calls(),
        [
            SysCall::Pwrite {
                offset: 0x30_0010,
                data: b"abcd".to_vec(),
            },
            SysCall::Pread {
                offset: 0x30_0ffc,
                len: 4,
            },
        ]
    );
}

#[test]
fn out_of_region_accesses_never_reach_the_device() {
    let fake = fake();
    let k = kernel_over(&fake);
    let mut buf = [0u8; 4];
    for (index, offset) in [(2, 0xffd), (2, 0x1000), (2, u64::MAX), (4, 0), (6, 0)] {
        let read = k.region_read(index, offset, &mut buf);
        assert!(
            matches!(read, Err(PassthroughError::OutOfRegion { index: i, offset: o, len: 4 }) if i == index && o == offset),
            "{index} {offset:#x}: {read:?}"
        );
        let write = k.region_write(index, offset, &buf);
        assert!(
            matches!(write, Err(PassthroughError::OutOfRegion { .. })),
            "{write:?}"
        );
    }
    assert!(fake.take_calls().is_empty());
}

#[test]
fn failed_accesses_are_kernel_errors() {
    let fake = fake();
    let k = kernel_over(&fake);
    fake.fail(SysOp::Pread);
    fake.fail(SysOp::Pwrite);
    let mut buf = [0u8; 4];
    let read = k.region_read(2, 0, &mut buf).unwrap_err();
    assert!(
        matches!(
            read,
            PassthroughError::Kernel {
                op: "region read",
                ..
            }
        ),
        "{read}"
    );
    let write = k.region_write(2, 0, &buf).unwrap_err();
    assert!(
        matches!(
            write,
            PassthroughError::Kernel {
                op: "region write",
                ..
            }
        ),
        "{write}"
    );
    fake.heal();
    k.region_read(2, 0, &mut buf).unwrap();
}

#[test]
fn mmap_areas_are_the_whole_pages_the_device_allows() {
    let fake = fake();
    let k = kernel_over(&fake);
    assert_eq!(
        k.mmap_areas(0),
        [area(0, 0x1000), area(0x2000, 0x2000)],
        "sparse areas, without the unaligned one and the one past the end"
    );
    assert_eq!(k.mmap_areas(1), [area(0, 0x2000)], "no caps: whole region");
    assert!(k.mmap_areas(2).is_empty(), "not mmappable");
    assert!(k.mmap_areas(3).is_empty(), "smaller than a page");
    assert!(k.mmap_areas(4).is_empty(), "no region");
    assert!(k.mmap_areas(5).is_empty(), "no sparse areas");
    assert!(k.mmap_areas(6).is_empty(), "no region");
    assert!(fake.take_calls().is_empty());
}

#[test]
fn a_mapped_area_is_the_device_files_bytes() {
    let fake = fake();
    let k = kernel_over(&fake);
    let mapping = k.mmap(0, area(0x2000, 0x2000)).unwrap();
    assert_eq!((mapping.index(), mapping.area()), (0, area(0x2000, 0x2000)));
    let base = mapping.host_addr() as *mut u8;

    // SAFETY: the mapping is 0x2000 bytes at `base` and lives until the
    // end of the test; volatile, since the device file changes it too.
    unsafe {
        for (i, &b) in b"mmio".iter().enumerate() {
            base.add(0x10 + i).write_volatile(b);
        }
    }
    let mut back = [0u8; 4];
    k.region_read(0, 0x2010, &mut back).unwrap();
    assert_eq!(&back, b"mmio");

    k.region_write(0, 0x3ffc, b"back").unwrap();
    // SAFETY: as above; 0x1ffc + 4 is within the mapping.
    let seen: Vec<u8> = (0..4)
        .map(|i| unsafe { base.add(0x1ffc + i).read_volatile() })
        .collect();
    assert_eq!(seen, b"back");
    assert_eq!(
        fake.take_calls(),
        [
            SysCall::DeviceFile,
            SysCall::Pread {
                offset: 0x10_2010,
                len: 4,
            },
            SysCall::Pwrite {
                offset: 0x10_3ffc,
                data: b"back".to_vec(),
            },
        ]
    );
}

#[test]
fn only_listed_areas_are_mapped() {
    let fake = fake();
    let k = kernel_over(&fake);
    for (index, refused) in [
        (0, area(0x1000, 0x1000)),
        (0, area(0x1800, 0x800)),
        (0, area(0x2000, 0x1000)),
        (0, area(0x3000, 0x2000)),
        (2, area(0, 0x1000)),
        (6, area(0, 0x1000)),
    ] {
        let err = k.mmap(index, refused).unwrap_err();
        assert!(
            matches!(err, PassthroughError::Map { index: i, offset, .. } if i == index && offset == refused.offset),
            "{err}"
        );
    }
    assert!(fake.take_calls().is_empty());

    fake.fail(SysOp::DeviceFile);
    let err = k.mmap(1, area(0, 0x2000)).unwrap_err();
    assert!(
        matches!(err, PassthroughError::Map { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn interrupts_become_set_irqs() {
    let fake = fake();
    let k = kernel_over(&fake);
    let fds: Vec<EventFd> = (0..5)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let all: Vec<&EventFd> = fds.iter().collect();
    let err = k.enable_irq(IrqKind::Msi, &all).unwrap_err();
    assert!(
        matches!(
            err,
            PassthroughError::IrqCount {
                kind: IrqKind::Msi,
                available: 4,
                requested: 5
            }
        ),
        "{err}"
    );
    let err = k.enable_irq(IrqKind::Msix, &all[..1]).unwrap_err();
    assert!(matches!(err, PassthroughError::IrqCount { .. }), "{err}");
    assert!(fake.take_calls().is_empty(), "refused before any ioctl");

    k.enable_irq(IrqKind::Msi, &all[..2]).unwrap();
    assert!(fake.fire(MSI, 1));
    assert_eq!(fds[1].read().unwrap(), 1);
    assert!(!fake.fire(MSI, 2), "vector 2 has no eventfd");
    k.disable_irq(IrqKind::Msi).unwrap();
    assert!(!fake.fire(MSI, 1));
    k.enable_irq(IrqKind::Intx, &all[..1]).unwrap();
    k.unmask_irq(IrqKind::Intx).unwrap();
    let set = |index, action, count| SysCall::SetIrqs {
        index,
        action,
        count,
    };
    assert_eq!(
        fake.take_calls(),
        [
            set(MSI, IrqAction::Trigger, 2),
            set(MSI, IrqAction::Disable, 0),
            set(INTX, IrqAction::Trigger, 1),
            set(INTX, IrqAction::Unmask, 0),
        ]
    );

    fake.fail(SysOp::SetIrqs);
    let err = k.enable_irq(IrqKind::Intx, &all[..1]).unwrap_err();
    assert!(
        matches!(
            err,
            PassthroughError::Kernel {
                op: "enable interrupts",
                ..
            }
        ),
        "{err}"
    );
    let err = k.unmask_irq(IrqKind::Intx).unwrap_err();
    assert!(
        matches!(
            err,
            PassthroughError::Kernel {
                op: "unmask interrupts",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn dma_maps_reach_the_container() {
    let fake = fake();
    let k = kernel_over(&fake);
    k.dma_map(&DmaRange {
        iova: 0x1000,
        size: 0x2000,
        host_addr: 0x7f00_0000_0000,
        fd: None,
        fd_offset: 0,
    })
    .unwrap();
    k.dma_unmap(0x1000, 0x2000).unwrap();
    assert_eq!(
        fake.take_calls(),
        [
            SysCall::DmaMap {
                iova: 0x1000,
                size: 0x2000,
                host_addr: 0x7f00_0000_0000,
            },
            SysCall::DmaUnmap {
                iova: 0x1000,
                size: 0x2000,
            },
        ]
    );
    fake.fail(SysOp::DmaUnmap);
    let err = k.dma_unmap(0x1000, 0x2000).unwrap_err();
    assert!(
        matches!(
            err,
            PassthroughError::Kernel {
                op: "DMA unmap",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn guest_ram_is_dma_mapped_at_iova_equal_gpa() {
    let fake = fake();
    let k = kernel_over(&fake);
    let ram = memfd_guest_memory(&[(GuestAddress(0), 0x2000), (GuestAddress(0x10_0000), 0x1000)])
        .unwrap();
    dma_map_guest_memory(&k, &ram, &DmaDomain::unrestricted()).unwrap();
    let expected: Vec<SysCall> = dma_ranges(&ram, &DmaDomain::unrestricted())
        .iter()
        .map(|r| SysCall::DmaMap {
            iova: r.iova,
            size: r.size as usize,
            host_addr: r.host_addr,
        })
        .collect();
    assert_eq!(expected.len(), 2);
    assert!(matches!(
        expected[1],
        SysCall::DmaMap {
            iova: 0x10_0000,
            size: 0x1000,
            ..
        }
    ));
    assert_eq!(fake.take_calls(), expected);
}

#[test]
fn a_dma_window_limits_what_reaches_the_iommu() {
    let fake = fake();
    let k = kernel_over(&fake);
    let ram = memfd_guest_memory(&[(GuestAddress(0), 0x4000), (GuestAddress(0x10_0000), 0x1000)])
        .unwrap();
    let domain = DmaDomain::new(&[Window::new(0x2000, 0x1000)]).unwrap();
    dma_map_guest_memory(&k, &ram, &domain).unwrap();
    let base = vm_memory::GuestMemoryBackend::iter(&ram)
        .next()
        .unwrap()
        .as_ptr() as u64;
    // One page of the first region, none of the second.
    assert_eq!(
        fake.take_calls(),
        [SysCall::DmaMap {
            iova: 0x2000,
            size: 0x1000,
            host_addr: base + 0x2000,
        }]
    );
}

#[test]
fn a_failed_dma_map_names_the_op() {
    let fake = fake();
    let k = kernel_over(&fake);
    let ram = memfd_guest_memory(&[(GuestAddress(0), 0x1000), (GuestAddress(0x10_0000), 0x1000)])
        .unwrap();
    fake.fail(SysOp::DmaMap);
    let err = dma_map_guest_memory(&k, &ram, &DmaDomain::unrestricted()).unwrap_err();
    assert!(
        matches!(err, PassthroughError::Kernel { op: "DMA map", .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("VFIO DMA map: "), "{err}");
    assert_eq!(fake.take_calls().len(), 1, "stops at the first failure");
}

#[test]
fn reset_reaches_the_device() {
    let fake = fake();
    let k = kernel_over(&fake);
    k.reset().unwrap();
    assert_eq!(fake.take_calls(), [SysCall::Reset]);
    fake.fail(SysOp::Reset);
    let err = k.reset().unwrap_err();
    assert!(
        matches!(err, PassthroughError::Kernel { op: "reset", .. }),
        "{err}"
    );
}

/// Configuration space of a device 1234:5678 with BARs 0-3 (as the fake
/// has them), INTx pin A and MSI.
fn config_space() -> Vec<u8> {
    let mut config = ConfigSpace::new(&Header {
        vendor_id: 0x1234,
        device_id: 0x5678,
        revision_id: 1,
        class: ClassCode::ETHERNET,
        subsystem_vendor_id: 0x1234,
        subsystem_id: 0x0001,
        interrupt_pin: Some(IntxPin::A),
        multifunction: false,
    });
    for (index, size) in [(0, 0x4000), (1, 0x2000), (2, 0x1000), (3, 0x100)] {
        config
            .set_bar(index, Bar::mmio32(size, false).unwrap())
            .unwrap();
    }
    config
        .add_msi(MsiConfig {
            vectors: 4,
            address_64bit: true,
            per_vector_mask: false,
        })
        .unwrap();
    (0..256).map(|o| config.read(o, 1) as u8).collect()
}

#[test]
fn a_function_builds_over_the_fake_syscalls_and_resets_when_dropped() {
    let fake = fake();
    fake.poke(CONFIG_AT, &config_space()).unwrap();
    let device: Arc<dyn PassthroughDevice> = Arc::new(kernel_over(&fake));
    let sink = Arc::new(RecordedInterrupts::default());
    let mut function = VfioPciFunction::new(device, sink).unwrap();
    assert_eq!(function.config_read(0, 4), 0x5678_1234);
    let calls = fake.take_calls();
    assert!(
        calls.contains(&SysCall::Pread {
            offset: CONFIG_AT,
            len: 256,
        }),
        "{calls:?}"
    );
    assert!(
        calls.contains(&SysCall::SetIrqs {
            index: INTX,
            action: IrqAction::Trigger,
            count: 1,
        }),
        "INTx wired: {calls:?}"
    );
    drop(function);
    let calls = fake.take_calls();
    assert!(calls.contains(&SysCall::Reset), "{calls:?}");
}

#[test]
fn targets_become_sysfs_paths() {
    assert_eq!(
        sysfs_path("0000:01:00.0"),
        Path::new("/sys/bus/pci/devices/0000:01:00.0")
    );
    assert_eq!(sysfs_path("/sys/devices/x"), Path::new("/sys/devices/x"));
}

#[test]
fn a_host_without_vfio_is_named_first() {
    if Path::new("/dev/vfio/vfio").exists() {
        return;
    }
    let why = missing_support(Path::new("/sys/bus/pci/devices/0000:01:00.0")).unwrap();
    assert!(why.starts_with("/dev/vfio/vfio is missing"), "{why}");
    let err = KernelVfio::open(Path::new("/sys/bus/pci/devices/0000:01:00.0"))
        .err()
        .expect("no container without /dev/vfio");
    assert!(err.to_string().contains("open container"), "{err}");
}

/// Real passthrough: config space and BAR sizes of a device bound to
/// vfio-pci, through the same function the vfio-user backend uses.
#[test]
#[ignore = "needs /dev/vfio and a device bound to vfio-pci: set WASMVISOR_VFIO_BDF"]
fn a_bound_device_shows_its_config_space_through_the_function() {
    let bdf = std::env::var("WASMVISOR_VFIO_BDF").expect("WASMVISOR_VFIO_BDF=0000:BB:DD.F");
    let path = sysfs_path(&bdf);
    if let Some(why) = missing_support(&path) {
        panic!("{why}");
    }
    let device: Arc<dyn PassthroughDevice> = Arc::new(KernelVfio::open(&path).unwrap());
    let mut id = [0u8; 4];
    device
        .region_read(crate::passthrough::CONFIG_REGION, 0, &mut id)
        .unwrap();
    let vendor = std::fs::read_to_string(path.join("vendor")).unwrap();
    let vendor = u16::from_str_radix(vendor.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), vendor);
    let sink = Arc::new(wasmvisor_pci::RecordedInterrupts::default());
    let mut function = crate::VfioPciFunction::new(device, sink).unwrap();
    assert_eq!(function.config_read(0, 2), u32::from(vendor));
}

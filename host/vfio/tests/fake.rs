//! `VfioPciFunction` against `FakeDevice`, the fake syscall layer: what
//! reaches the device, and what the guest sees instead.

use std::sync::Arc;

use vm_memory::GuestAddress;
use wasmvisor_pci::{
    reg, Bar, BarKind, ClassCode, Command, ConfigSpace, DmaDomain, Header, Interrupt, IntxPin,
    MsiConfig, MsiMessage, MsixConfig, PciDevice, RecordedInterrupts, CAP_ID_MSI, CAP_ID_MSIX,
    CAP_ID_VENDOR,
};
use wasmvisor_vfio::{
    dma_map_guest_memory, memfd_guest_memory, BypassCall, FakeCall, FakeDevice, IrqKind,
    PassthroughDevice, RecordedBypass, VfioPciFunction, CONFIG_REGION,
};

/// A device 1234:5678 with a 4 KiB BAR 0, a 1 MiB 64-bit BAR 2, and
/// capabilities MSI-X, vendor, MSI in that order.
fn device() -> Arc<FakeDevice> {
    Arc::new(device_with(0))
}

/// [`device`] whose backend signals `msix` MSI-X vectors.
fn device_with(msix: u32) -> FakeDevice {
    let mut config = ConfigSpace::new(&Header {
        vendor_id: 0x1234,
        device_id: 0x5678,
        revision_id: 2,
        class: ClassCode::ETHERNET,
        subsystem_vendor_id: 0x1234,
        subsystem_id: 0x0001,
        interrupt_pin: Some(IntxPin::A),
        multifunction: true,
    });
    config
        .set_bar(0, Bar::mmio32(0x1000, false).unwrap())
        .unwrap();
    config
        .set_bar(2, Bar::mmio64(0x10_0000, true).unwrap())
        .unwrap();
    config
        .add_msix(MsixConfig {
            table_size: 8,
            table_bar: 0,
            table_offset: 0x800,
            pba_bar: 0,
            pba_offset: 0xc00,
        })
        .unwrap();
    config.add_vendor_capability(&[0xaa, 0xbb]).unwrap();
    config
        .add_msi(MsiConfig {
            vectors: 4,
            address_64bit: true,
            per_vector_mask: false,
        })
        .unwrap();
    let bytes: Vec<u8> = (0..256).map(|o| config.read(o, 1) as u8).collect();
    FakeDevice::new(&bytes, [0x1000, 0, 0x10_0000, 0, 0, 0], 4).with_msix_vectors(msix)
}

fn function(fake: &Arc<FakeDevice>) -> (VfioPciFunction, Arc<RecordedInterrupts>) {
    let sink = Arc::new(RecordedInterrupts::default());
    let device: Arc<dyn PassthroughDevice> = fake.clone();
    let f = VfioPciFunction::new(device, sink.clone()).unwrap();
    (f, sink)
}

fn capability_ids(f: &mut VfioPciFunction) -> Vec<(u8, u16)> {
    let mut ids = Vec::new();
    let mut at = f.config_read(reg::CAPABILITIES, 1) as u16;
    while at != 0 {
        ids.push((f.config_read(at, 1) as u8, at));
        at = f.config_read(at + 1, 1) as u16;
    }
    ids
}

#[test]
fn setup_reads_config_and_wires_intx_only() {
    let fake = device();
    let (mut f, _) = function(&fake);
    assert_eq!(
        fake.take_calls(),
        [
            FakeCall::Read {
                index: CONFIG_REGION,
                offset: 0,
                len: 256
            },
            FakeCall::EnableIrq(IrqKind::Intx, 1),
        ]
    );
    assert_eq!(f.config_read(reg::VENDOR_ID, 4), 0x5678_1234);
    assert_eq!(f.config_read(reg::CLASS_CODE + 2, 1), 0x02);
    // Multifunction is hidden: the function is a slot of its own.
    assert_eq!(f.config_read(reg::HEADER_TYPE, 1), 0);
}

#[test]
fn msix_is_unlinked_when_the_backend_has_no_msix_vectors() {
    let fake = device();
    let (mut f, _) = function(&fake);
    let caps = capability_ids(&mut f);
    let ids: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(ids, [CAP_ID_VENDOR, CAP_ID_MSI]);
    assert_eq!(f.hidden_capabilities(), [CAP_ID_MSIX]);
    // The vendor capability's payload is the device's.
    assert_eq!(f.config_read(caps[0].1 + 3, 2), 0xbbaa);
    assert_ne!(f.config_read(reg::STATUS, 2) & 0x10, 0);
}

#[test]
fn bars_size_in_the_shadow_and_never_reach_the_device() {
    let fake = device();
    let (mut f, _) = function(&fake);
    fake.take_calls();
    for (bar, value) in [(0u16, 0xffff_ffff), (2, 0xffff_ffff), (3, 0xffff_ffff)] {
        f.config_write(reg::BAR0 + 4 * bar, 4, value);
    }
    assert_eq!(f.config_read(reg::BAR0, 4), 0xffff_f000);
    assert_eq!(f.config_read(reg::BAR0 + 8, 4), 0xfff0_000c);
    assert_eq!(f.config_read(reg::BAR0 + 12, 4), 0xffff_ffff);
    f.config_write(reg::BAR0 + 8, 4, 0);
    f.config_write(reg::BAR0 + 12, 4, 0x40);
    let regions = f.bar_regions();
    assert_eq!(regions.len(), 2);
    assert_eq!(
        regions[1].bar.kind(),
        BarKind::Mmio64 { prefetchable: true }
    );
    assert_eq!(regions[1].address, 0x40_0000_0000);
    assert!(fake.take_calls().is_empty());
    assert_eq!(
        fake.region(CONFIG_REGION)[0x18..0x20],
        [0xc, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn command_writes_are_forwarded_and_bar_accesses_trapped() {
    let fake = device();
    let (mut f, _) = function(&fake);
    fake.take_calls();
    f.config_write(reg::COMMAND, 2, 0xffff);
    let command = Command::WRITABLE;
    assert_eq!(
        fake.take_calls(),
        [FakeCall::Write {
            index: CONFIG_REGION,
            offset: reg::COMMAND.into(),
            data: command.to_le_bytes().to_vec()
        }]
    );
    f.bar_write(2, 0x10, 8, 0x0102_0304_0506_0708);
    assert_eq!(f.bar_read(2, 0x14, 2), 0x0304);
    assert_eq!(
        fake.take_calls(),
        [
            FakeCall::Write {
                index: 2,
                offset: 0x10,
                data: vec![8, 7, 6, 5, 4, 3, 2, 1]
            },
            FakeCall::Read {
                index: 2,
                offset: 0x14,
                len: 2
            },
        ]
    );
    // Past the end: all-ones, nothing reaches the device.
    assert_eq!(f.bar_read(0, 0x1000, 4), 0xffff_ffff);
}

#[test]
fn msi_enable_sets_eventfds_and_signals_become_messages() {
    let fake = device();
    let (mut f, sink) = function(&fake);
    let msi = capability_ids(&mut f)[1].1;
    fake.take_calls();
    f.config_write(msi + 4, 4, 0xfee0_0000);
    f.config_write(msi + 0x0c, 2, 0x30);
    f.config_write(msi + 2, 2, 1 | 2 << 4);
    assert_eq!(fake.take_calls(), [FakeCall::EnableIrq(IrqKind::Msi, 4)]);
    assert!(fake.fire(IrqKind::Msi, 3));
    assert_eq!(f.interrupts().poll(), 1);
    assert_eq!(
        sink.take(),
        [Interrupt::Msi(MsiMessage {
            address: 0xfee0_0000,
            data: 0x33
        })]
    );
    f.config_write(msi + 2, 2, 0);
    assert_eq!(fake.take_calls(), [FakeCall::DisableIrq(IrqKind::Msi)]);
}

#[test]
fn an_interrupt_thread_delivers_without_polling() {
    let fake = device();
    let (mut f, sink) = function(&fake);
    let mut thread = f.interrupts().spawn().unwrap();
    assert!(fake.fire(IrqKind::Intx, 0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sink.take().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no INTx delivered");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    thread.stop();
    fake.take_calls();
    // A BAR access ends the interrupt: line down, device unmasked.
    f.bar_read(0, 0, 4);
    assert_eq!(sink.take(), [Interrupt::Intx(false)]);
    assert!(fake
        .take_calls()
        .contains(&FakeCall::UnmaskIrq(IrqKind::Intx)));
}

#[test]
fn guest_ram_is_dma_mapped_with_its_fd() {
    let fake = device();
    let ram = memfd_guest_memory(&[
        (GuestAddress(0), 0x4000),
        (GuestAddress(0x1_0000_0000), 0x2000),
    ])
    .unwrap();
    dma_map_guest_memory(fake.as_ref(), &ram, &DmaDomain::unrestricted()).unwrap();
    assert_eq!(
        fake.take_calls(),
        [
            FakeCall::DmaMap {
                iova: 0,
                size: 0x4000,
                with_fd: true,
                fd_offset: 0
            },
            FakeCall::DmaMap {
                iova: 0x1_0000_0000,
                size: 0x2000,
                with_fd: true,
                fd_offset: 0x4000
            },
        ]
    );
}

#[test]
fn reset_and_drop_reset_the_device() {
    let fake = device();
    let (mut f, _) = function(&fake);
    f.config_write(reg::INTERRUPT_LINE, 1, 11);
    fake.take_calls();
    f.reset();
    assert_eq!(f.config_read(reg::INTERRUPT_LINE, 1), 0);
    assert!(fake.take_calls().contains(&FakeCall::Reset));
    drop(f);
    assert_eq!(
        fake.take_calls(),
        [FakeCall::DisableIrq(IrqKind::Intx), FakeCall::Reset]
    );
}

#[test]
fn with_a_bypass_enabled_vectors_are_routed_and_follow_the_guest() {
    let fake = device();
    let bypass = Arc::new(RecordedBypass::default());
    let sink = Arc::new(RecordedInterrupts::default());
    let device: Arc<dyn PassthroughDevice> = fake.clone();
    let mut f = VfioPciFunction::with_bypass(device, sink.clone(), Some(bypass.clone())).unwrap();
    // INTx goes to KVM at once, with a resample eventfd.
    let calls = bypass.take();
    assert!(
        matches!(calls[..], [BypassCall::AttachIntx(_)]),
        "{calls:?}"
    );
    let msi = capability_ids(&mut f)[1].1;
    f.config_write(msi + 4, 4, 0xfee0_0000);
    f.config_write(msi + 0x0c, 2, 0x30);
    // Nothing is routed while MSI is off.
    assert_eq!(bypass.take(), []);
    f.config_write(msi + 2, 2, 1 | 1 << 4);
    let messages: Vec<u32> = bypass
        .take()
        .iter()
        .map(|c| match c {
            BypassCall::AttachMsi(_, m) => {
                assert_eq!(m.address, 0xfee0_0000);
                m.data
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(messages, [0x30, 0x31], "the two enabled vectors");
    assert_eq!(f.interrupts().routed_vectors(), 2);
    // A new data value re-routes both; nothing is delivered by the VMM.
    f.config_write(msi + 0x0c, 2, 0x50);
    assert_eq!(bypass.take().len(), 2);
    assert_eq!(f.interrupts().delivered_by_vmm(), 0);
    // Disabling takes the routes down, so later signals come back to the
    // VMM (and are dropped, since MSI is off).
    f.config_write(msi + 2, 2, 0);
    let calls = bypass.take();
    assert!(
        calls.len() == 2 && calls.iter().all(|c| matches!(c, BypassCall::DetachMsi(_))),
        "{calls:?}"
    );
    assert_eq!(f.interrupts().routed_vectors(), 0);
    assert_eq!(f.interrupts().routes_made(), 5);
    drop(f);
    let calls = bypass.take();
    assert!(
        calls.iter().any(|c| matches!(c, BypassCall::DetachIntx(_))),
        "{calls:?}"
    );
    assert!(sink.take().is_empty());
}

#[test]
fn msix_is_kept_when_the_backend_signals_it_and_its_table_is_the_vmms() {
    let fake = Arc::new(device_with(8));
    let bypass = Arc::new(RecordedBypass::default());
    let sink = Arc::new(RecordedInterrupts::default());
    let device: Arc<dyn PassthroughDevice> = fake.clone();
    let mut f = VfioPciFunction::with_bypass(device, sink.clone(), Some(bypass.clone())).unwrap();
    let caps = capability_ids(&mut f);
    let ids: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(ids, [CAP_ID_MSIX, CAP_ID_VENDOR, CAP_ID_MSI]);
    assert!(f.hidden_capabilities().is_empty());
    let msix = caps[0].1;
    // Table size 8, table at 0x800 and PBA at 0xc00 of BAR 0, as the
    // device has them; off at power-on.
    assert_eq!(f.config_read(msix + 2, 2), 7);
    assert_eq!(f.config_read(msix + 4, 4), 0x800);
    fake.take_calls();
    bypass.take();
    // Entry 3 to vector 0x45: the VMM's table, nothing reaches the device.
    f.bar_write(0, 0x830, 8, 0xfee0_0000);
    f.bar_write(0, 0x838, 4, 0x45);
    f.bar_write(0, 0x83c, 4, 0);
    assert_eq!(f.bar_read(0, 0x838, 4), 0x45);
    assert_eq!(fake.take_calls(), []);
    // Enabling puts all 8 vectors on the device and routes entry 3 only.
    f.config_write(msix + 2, 2, 0x8000);
    assert_eq!(fake.take_calls(), [FakeCall::EnableIrq(IrqKind::Msix, 8)]);
    let routed = bypass.take();
    assert!(
        matches!(routed[..], [BypassCall::AttachMsi(_, m)] if m.data == 0x45),
        "{routed:?}"
    );
    // A signal on masked vector 5 becomes its pending bit in the PBA...
    assert!(fake.fire(IrqKind::Msix, 5));
    assert_eq!(f.interrupts().poll(), 1);
    assert!(sink.take().is_empty());
    assert_eq!(f.bar_read(0, 0xc00, 8), 1 << 5);
    // ...and unmasking entry 5 delivers it once and routes it.
    f.bar_write(0, 0x850, 8, 0xfee0_0000);
    f.bar_write(0, 0x858, 4, 0x46);
    f.bar_write(0, 0x85c, 4, 0);
    assert_eq!(
        sink.take(),
        [Interrupt::Msi(MsiMessage {
            address: 0xfee0_0000,
            data: 0x46
        })]
    );
    assert_eq!(f.bar_read(0, 0xc00, 8), 0);
    assert_eq!(f.interrupts().routed_vectors(), 2);
    // The function mask takes every route down; disabling turns the
    // device's MSI-X off.
    f.config_write(msix + 2, 2, 0xc000);
    assert_eq!(f.interrupts().routed_vectors(), 0);
    f.config_write(msix + 2, 2, 0);
    assert_eq!(fake.take_calls(), [FakeCall::DisableIrq(IrqKind::Msix)]);
}

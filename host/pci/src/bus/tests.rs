use std::sync::{Arc, Mutex};

use super::*;
use crate::bar::Bar;
use crate::config::{test_header, ConfigSpace};
use crate::device::DirectMap;
use crate::ecam::ECAM_BUS_SIZE;
use crate::layout::PciLayout;

/// One BAR access a probe saw: BAR, offset, size, and the value written
/// (`None` for a read).
type Access = (u8, u64, u8, Option<u64>);

/// A device that declares three BARs and logs what reaches them.
struct Probe {
    config: ConfigSpace,
    log: Arc<Mutex<Vec<Access>>>,
}

impl Probe {
    fn new(mmio64_size: u64) -> (Box<Probe>, Arc<Mutex<Vec<Access>>>) {
        let mut config = ConfigSpace::new(&test_header());
        config
            .set_bar(0, Bar::mmio32(0x1000, false).unwrap())
            .unwrap();
        config.set_bar(1, Bar::io(0x20).unwrap()).unwrap();
        config
            .set_bar(2, Bar::mmio64(mmio64_size, true).unwrap())
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            config,
            log: Arc::clone(&log),
        };
        (Box::new(probe), log)
    }
}

impl PciDevice for Probe {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config.read(offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        self.config.write(offset, size, value);
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        self.log.lock().unwrap().push((bar, offset, size, None));
        0x1234_5678
    }

    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
        self.log
            .lock()
            .unwrap()
            .push((bar, offset, size, Some(value)));
    }

    fn reset(&mut self) {
        self.config.reset();
    }

    /// BAR 2's second page is host memory at 0x7000_0000 (and a part that
    /// would run past the BAR is offered too, to be left out).
    fn direct_maps(&self) -> Vec<DirectMap> {
        vec![
            DirectMap {
                bar: 2,
                offset: 0x1000,
                size: 0x1000,
                host_addr: 0x7000_0000,
            },
            DirectMap {
                bar: 2,
                offset: 0x3000,
                size: 0x2000,
                host_addr: 0x7100_0000,
            },
        ]
    }
}

const PROBE_SLOT: u8 = 3;
const ECAM_BASE: u64 = PciLayout::ECAM.base;

fn probe_bdf() -> Bdf {
    Bdf::slot(PROBE_SLOT).unwrap()
}

/// A bus with the host bridge and a probe in slot 3.
fn bus() -> (PciBus, Arc<Mutex<Vec<Access>>>) {
    let mut bus = PciBus::new(PciLayout::default());
    let (probe, log) = Probe::new(0x4000);
    assert_eq!(bus.add_at(PROBE_SLOT, probe), Ok(probe_bdf()));
    (bus, log)
}

/// The mechanism #1 address of `register` of function 0 of `device`.
fn address(device: u8, register: u32) -> u32 {
    ConfigAddress::ENABLE | u32::from(device) << 11 | register
}

fn select(bus: &mut PciBus, value: u32) {
    assert!(bus.pio_write(CONFIG_ADDRESS_PORT, 4, value));
}

#[test]
fn mechanism_1_finds_the_host_bridge_on_every_byte_lane() {
    let (mut bus, _) = bus();
    select(&mut bus, address(0, 0));
    assert_eq!(bus.pio_read(0xcfc, 4), Some(0x0001_5741));
    assert_eq!(bus.pio_read(0xcfd, 1), Some(0x57));
    assert_eq!(bus.pio_read(0xcfe, 1), Some(0x01));
    assert_eq!(bus.pio_read(0xcff, 1), Some(0x00));
    assert_eq!(bus.pio_read(0xcfe, 2), Some(0x0001));
    assert_eq!(bus.pio_read(0xcfd, 2), Some(0x0157));
    // Class code at 0x08: a host bridge.
    select(&mut bus, address(0, 0x08));
    assert_eq!(bus.pio_read(0xcfc, 4), Some(0x0600_0000));
}

#[test]
fn the_address_register_reads_back_and_ignores_partial_accesses() {
    let (mut bus, _) = bus();
    select(&mut bus, 0x8000_0000);
    assert_eq!(bus.pio_read(0xcf8, 4), Some(0x8000_0000));
    // Mechanism #2 probing: claimed, answered by nothing.
    assert!(bus.pio_write(0xcfb, 1, 0x01));
    assert!(bus.pio_write(0xcf8, 1, 0x00));
    assert_eq!(bus.pio_read(0xcf8, 4), Some(0x8000_0000));
    assert_eq!(bus.pio_read(0xcf8, 1), Some(0xff));
    assert_eq!(bus.pio_read(0xcfa, 2), Some(0xffff));
    select(&mut bus, 0xffff_ffff);
    assert_eq!(bus.pio_read(0xcf8, 4), Some(0x80ff_fffc));
    assert_eq!(bus.decode_pio(0xcf7, 1), None);
    assert_eq!(bus.decode_pio(0xd00, 1), None);
}

#[test]
fn registers_are_dword_aligned_and_lanes_pick_their_bytes() {
    let (mut bus, _) = bus();
    // The low two bits of the address register are ignored.
    select(&mut bus, address(PROBE_SLOT, 0x3c | 0x3));
    assert_eq!(
        bus.decode_pio(0xcfd, 1),
        Some(Target::Config {
            bdf: probe_bdf(),
            offset: 0x3d
        })
    );
    // Interrupt line (written at add: slot 3, INTA#) and pin.
    assert_eq!(bus.pio_read(0xcfc, 4), Some(0x0000_0113));
    assert_eq!(bus.intx_line(PROBE_SLOT, IntxPin::A), 19);
    assert!(bus.pio_write(0xcfc, 1, 0x0b));
    assert_eq!(bus.pio_read(0xcfc, 2), Some(0x010b));
    // A byte write to lane 1 of the command dword is its high byte.
    select(&mut bus, address(PROBE_SLOT, 0x04));
    assert!(bus.pio_write(0xcfd, 1, 0x04));
    assert_eq!(
        bus.pio_read(0xcfc, 2),
        Some(u32::from(Command::INTX_DISABLE))
    );
    // A word write at lane 2 reaches status, not command.
    assert!(bus.pio_write(0xcfe, 2, 0xffff));
    assert_eq!(
        bus.pio_read(0xcfc, 4),
        Some(u32::from(Command::INTX_DISABLE))
    );
}

#[test]
fn accesses_across_the_data_dword_master_abort() {
    let (mut bus, _) = bus();
    select(&mut bus, address(0, 0));
    assert_eq!(bus.decode_pio(0xcff, 2), Some(Target::MasterAbort));
    assert_eq!(bus.pio_read(0xcff, 2), Some(0xffff));
    assert_eq!(bus.pio_read(0xcfe, 4), Some(0xffff_ffff));
    assert_eq!(bus.pio_read(0xcfd, 4), Some(0xffff_ffff));
}

#[test]
fn without_the_enable_bit_the_data_ports_read_all_ones_and_drop_writes() {
    let (mut bus, _) = bus();
    select(&mut bus, address(PROBE_SLOT, 0x04) & !ConfigAddress::ENABLE);
    assert_eq!(bus.pio_read(0xcfc, 4), Some(0xffff_ffff));
    assert_eq!(bus.pio_read(0xcfe, 2), Some(0xffff));
    assert!(bus.pio_write(0xcfc, 2, 0x7));
    assert_eq!(bus.config_read(probe_bdf(), reg::COMMAND, 2), 0);
}

#[test]
fn absent_functions_read_all_ones_through_both_mechanisms() {
    let (mut bus, _) = bus();
    let function_1 = ConfigAddress::ENABLE | u32::from(PROBE_SLOT) << 11 | 1 << 8;
    let bus_1 = ConfigAddress::ENABLE | 1 << 16 | u32::from(PROBE_SLOT) << 11;
    for absent in [address(5, 0), address(31, 0), function_1, bus_1] {
        select(&mut bus, absent);
        assert_eq!(bus.pio_read(0xcfc, 4), Some(0xffff_ffff), "{absent:#x}");
        assert_eq!(bus.pio_read(0xcfe, 2), Some(0xffff));
        assert!(bus.pio_write(0xcfc, 4, 0));
    }
    assert_eq!(bus.mmio_read(ECAM_BASE + (5 << 15), 4), Some(0xffff_ffff));
    assert_eq!(bus.mmio_read(ECAM_BASE + (5 << 15) + 2, 2), Some(0xffff));
    assert_eq!(
        bus.mmio_read(ECAM_BASE + (3 << 15) + (1 << 12), 1),
        Some(0xff)
    );
}

#[test]
fn ecam_reaches_the_whole_configuration_space() {
    let (mut bus, _) = bus();
    let probe = ECAM_BASE + (u64::from(PROBE_SLOT) << 15);
    assert_eq!(bus.mmio_read(probe, 4), Some(0x1234_5741));
    assert_eq!(bus.mmio_read(probe + 2, 2), Some(0x1234));
    assert_eq!(bus.mmio_read(probe + 0x100, 4), Some(0));
    assert_eq!(bus.mmio_read(ECAM_BASE, 4), Some(0x0001_5741));
    assert!(bus.mmio_write(probe + 4, 2, u64::from(Command::MEMORY_SPACE)));
    select(&mut bus, address(PROBE_SLOT, 0x04));
    assert_eq!(
        bus.pio_read(0xcfc, 2),
        Some(u32::from(Command::MEMORY_SPACE))
    );
    // Wider than a dword, or across one: nothing answers.
    assert_eq!(bus.mmio_read(probe, 8), Some(u64::MAX));
    assert_eq!(bus.mmio_read(probe + 2, 4), Some(0xffff_ffff));
    assert_eq!(bus.mmio_read(probe + 3, 2), Some(0xffff));
    // Past the window (bus 1 of a one-bus window): not the bus's.
    assert_eq!(bus.mmio_read(ECAM_BASE + ECAM_BUS_SIZE, 4), None);
}

#[test]
fn the_ecam_window_goes_where_it_is_configured() {
    let mut bus = PciBus::new(PciLayout {
        ecam: Window::new(0xB000_0000, 2 * ECAM_BUS_SIZE),
        ..PciLayout::default()
    });
    assert_eq!(bus.mmio_read(0xB000_0000, 4), Some(0x0001_5741));
    assert_eq!(bus.mmio_read(ECAM_BASE, 4), None);
    // Bus 1 is inside this window, and empty.
    assert_eq!(
        bus.decode_mmio(0xB000_0000 + ECAM_BUS_SIZE + 8, 4),
        Some(Target::Config {
            bdf: Bdf::new(1, 0, 0).unwrap(),
            offset: 8
        })
    );
    assert_eq!(
        bus.mmio_read(0xB000_0000 + ECAM_BUS_SIZE, 4),
        Some(0xffff_ffff)
    );
}

/// A bus with its BARs assigned: the 64-bit BAR 2 (16 KiB) first, then
/// BAR 0 (4 KiB) and the I/O BAR 1.
fn assigned() -> (PciBus, Arc<Mutex<Vec<Access>>>) {
    let (mut bus, log) = bus();
    bus.assign_bars().unwrap();
    (bus, log)
}

const BAR0: u64 = 0xE800_4000;
const BAR1: u16 = 0xC000;
const BAR2: u64 = 0xE800_0000;

#[test]
fn assigned_bars_decode_only_once_the_command_register_enables_them() {
    let (mut bus, log) = assigned();
    let bdf = probe_bdf();
    assert_eq!(bus.config_read(bdf, reg::BAR0, 4), BAR0 as u32);
    assert_eq!(bus.config_read(bdf, reg::BAR0 + 4, 4), u32::from(BAR1) | 1);
    assert_eq!(bus.config_read(bdf, reg::BAR0 + 8, 4), BAR2 as u32 | 0xc);
    assert!(bus.routes().is_empty());
    assert_eq!(bus.mmio_read(BAR0, 4), None);
    assert_eq!(bus.pio_read(BAR1, 4), None);

    let before = bus.generation();
    bus.config_write(bdf, reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    assert_eq!(bus.generation(), before + 1);
    assert_eq!(bus.mmio_read(BAR0 + 0x10, 4), Some(0x1234_5678));
    assert!(bus.mmio_write(BAR2 + 8, 8, 0xabcd));
    assert_eq!(bus.pio_read(BAR1, 4), None, "I/O decoding is still off");
    assert_eq!(
        *log.lock().unwrap(),
        [(0, 0x10, 4, None), (2, 8, 8, Some(0xabcd))]
    );

    let both = Command::MEMORY_SPACE | Command::IO_SPACE;
    bus.config_write(bdf, reg::COMMAND, 2, both.into());
    assert_eq!(
        bus.decode_pio(BAR1 + 4, 2),
        Some(Target::Bar {
            device: PROBE_SLOT,
            bar: 1,
            offset: 4
        })
    );
    // Rewriting the same value changes no route.
    let now = bus.generation();
    bus.config_write(bdf, reg::COMMAND, 2, both.into());
    assert_eq!(bus.generation(), now);

    bus.config_write(bdf, reg::COMMAND, 2, Command::IO_SPACE.into());
    assert_eq!(bus.mmio_read(BAR0, 4), None);
    assert_eq!(bus.routes().len(), 1);
}

#[test]
fn accesses_must_stay_inside_the_bar() {
    let (mut bus, log) = assigned();
    bus.config_write(probe_bdf(), reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    assert_eq!(
        bus.decode_mmio(BAR0 + 0xffc, 4),
        Some(Target::Bar {
            device: PROBE_SLOT,
            bar: 0,
            offset: 0xffc
        })
    );
    assert_eq!(bus.decode_mmio(BAR0 + 0xffe, 4), Some(Target::MasterAbort));
    assert_eq!(bus.decode_mmio(BAR0 + 0xff8, 16), Some(Target::MasterAbort));
    assert_eq!(bus.mmio_read(BAR0 + 0xffe, 4), Some(0xffff_ffff));
    assert!(bus.mmio_write(BAR0 + 0xffe, 4, 0));
    assert_eq!(bus.decode_mmio(BAR0 + 0x1000, 4), None);
    assert!(log.lock().unwrap().is_empty());
}

#[test]
fn the_guest_can_size_and_move_a_bar() {
    let (mut bus, _) = assigned();
    let bdf = probe_bdf();
    bus.config_write(bdf, reg::BAR0, 4, 0xffff_ffff);
    assert_eq!(bus.config_read(bdf, reg::BAR0, 4), 0xffff_f000);
    bus.config_write(bdf, reg::BAR0, 4, 0xE810_0000);
    bus.config_write(bdf, reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    assert_eq!(bus.mmio_read(BAR0, 4), None);
    assert_eq!(bus.mmio_read(0xE810_0000, 4), Some(0x1234_5678));
    // The 64-bit BAR's high half sizes too.
    bus.config_write(bdf, reg::BAR0 + 12, 4, 0xffff_ffff);
    assert_eq!(bus.config_read(bdf, reg::BAR0 + 12, 4), 0xffff_ffff);
    // Mid-sizing, the BAR would wrap around: it is not routed.
    bus.config_write(bdf, reg::BAR0 + 8, 4, 0xffff_ffff);
    assert!(bus.routes().iter().all(|r| r.bar != 2));
}

#[test]
fn large_64_bit_bars_are_placed_above_4_gib() {
    let mut bus = PciBus::new(PciLayout::default());
    let (probe, _) = Probe::new(32 << 20);
    let bdf = bus.add(probe).unwrap();
    bus.assign_bars().unwrap();
    bus.config_write(bdf, reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    assert_eq!(bus.config_read(bdf, reg::BAR0 + 12, 4), 0x40);
    let bar2 = bus.routes().iter().find(|r| r.bar == 2).unwrap();
    assert_eq!((bar2.base, bar2.size), (0x40_0000_0000, 32 << 20));
    assert_eq!(bus.mmio_read(0x40_0000_0100, 4), Some(0x1234_5678));
}

#[test]
fn a_full_window_fails_the_assignment() {
    let tiny = PciLayout {
        mmio32: Window::new(0xE800_0000, 0x1000),
        mmio64: None,
        ..PciLayout::default()
    };
    let mut bus = PciBus::new(tiny);
    bus.add(Probe::new(0x4000).0).unwrap();
    let err = bus.assign_bars().unwrap_err();
    assert!(matches!(err, AllocError::Full { size: 0x4000, .. }));
}

#[test]
fn assigning_again_keeps_placed_bars_and_avoids_them() {
    let (mut bus, _) = assigned();
    let bdf = probe_bdf();
    // The guest moves BAR 0 to where the next device's BAR would go.
    bus.config_write(bdf, reg::BAR0, 4, 0xE800_5000);
    bus.assign_bars().unwrap();
    assert_eq!(bus.config_read(bdf, reg::BAR0, 4), 0xE800_5000);
    let (other, _) = Probe::new(0x4000);
    let second = bus.add(other).unwrap();
    bus.assign_bars().unwrap();
    let placed: Vec<u32> = (0..3)
        .map(|i| bus.config_read(second, reg::BAR0 + 4 * i, 4) & !0xf)
        .collect();
    assert_eq!(placed, [0xE800_4000, 0xC020, 0xE800_8000]);
    // After a reset every BAR is placed afresh, largest first across
    // devices: both 16 KiB BARs, then the pages.
    bus.reset();
    bus.assign_bars().unwrap();
    assert_eq!(bus.config_read(second, reg::BAR0 + 8, 4), 0xE800_000C);
    assert_eq!(bus.config_read(bdf, reg::BAR0 + 8, 4), 0xE800_400C);
    assert_eq!(bus.config_read(bdf, reg::BAR0, 4), 0xE800_9000);
}

#[test]
fn slots_are_checked_and_interrupt_lines_written() {
    let mut bus = PciBus::new(PciLayout::default()).with_intx_lines([5, 9, 10, 11]);
    assert_eq!(bus.free_slot(), Some(1));
    let bdf = bus.add(Probe::new(0x1000).0).unwrap();
    assert_eq!(bdf, Bdf::slot(1).unwrap());
    assert_eq!(bus.config_read(bdf, reg::INTERRUPT_LINE, 1), 9);
    assert_eq!(
        bus.add_at(1, Probe::new(0x1000).0),
        Err(BusError::SlotTaken { slot: 1 })
    );
    assert_eq!(
        bus.add_at(32, Probe::new(0x1000).0),
        Err(BusError::NoSuchSlot { slot: 32 })
    );
    for _ in 2..32 {
        bus.add(Probe::new(0x1000).0).unwrap();
    }
    assert_eq!(bus.free_slot(), None);
    assert_eq!(bus.add(Probe::new(0x1000).0), Err(BusError::Full));
    assert_eq!(
        BusError::Full.to_string(),
        "the PCI bus is full: all 32 slots are taken"
    );
}

#[test]
fn reset_returns_devices_and_the_address_register_to_power_on() {
    let (mut bus, _) = assigned();
    let bdf = probe_bdf();
    bus.config_write(bdf, reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    bus.config_write(bdf, reg::INTERRUPT_LINE, 1, 3);
    select(&mut bus, address(PROBE_SLOT, 0));
    assert!(!bus.routes().is_empty());
    bus.reset();
    assert!(bus.routes().is_empty());
    assert_eq!(bus.pio_read(0xcf8, 4), Some(0));
    assert_eq!(bus.config_read(bdf, reg::BAR0, 4), 0);
    // The interrupt line is the bus's wiring, written again.
    assert_eq!(bus.config_read(bdf, reg::INTERRUPT_LINE, 1), 19);
}

#[test]
fn overlapping_bars_go_to_the_lowest_slot_whatever_the_order_of_writes() {
    let (mut bus, high_log) = bus();
    let (low, low_log) = Probe::new(0x4000);
    let low_bdf = bus.add(low).unwrap();
    // The higher slot is programmed and enabled first.
    for bdf in [probe_bdf(), low_bdf] {
        bus.config_write(bdf, reg::BAR0, 4, 0xE800_0000);
        bus.config_write(bdf, reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    }
    let slots: Vec<u8> = bus.routes().iter().map(|r| r.device).collect();
    assert_eq!(slots, [1, PROBE_SLOT]);
    bus.mmio_read(0xE800_0000, 4);
    assert_eq!(low_log.lock().unwrap().len(), 1);
    assert!(high_log.lock().unwrap().is_empty());
}

#[test]
fn the_bus_can_be_shared_between_vcpu_threads() {
    fn shareable<T: Send>() {}
    // Behind a Mutex, which needs only Send.
    shareable::<PciBus>();
    shareable::<std::sync::Mutex<PciBus>>();
}

#[test]
fn direct_maps_follow_decoding_and_moves_of_their_bar() {
    let (mut bus, _) = assigned();
    let bdf = probe_bdf();
    assert!(bus.direct_maps().is_empty(), "memory decoding is off");
    bus.config_write(bdf, reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    let at = |gpa| GuestMapping {
        gpa,
        size: 0x1000,
        host_addr: 0x7000_0000,
    };
    assert_eq!(bus.direct_maps(), [at(BAR2 + 0x1000)]);
    // The guest moves BAR 2 (a 64-bit BAR: low dword, then high).
    bus.config_write(bdf, reg::BAR0 + 8, 4, 0xE810_0000);
    bus.config_write(bdf, reg::BAR0 + 12, 4, 0);
    assert_eq!(bus.direct_maps(), [at(0xE810_1000)]);
    bus.config_write(bdf, reg::COMMAND, 2, 0);
    assert!(bus.direct_maps().is_empty());
}

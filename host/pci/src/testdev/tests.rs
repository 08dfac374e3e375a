use std::sync::Mutex;

use super::*;
use crate::bus::PciBus;
use crate::capability::{CAP_ID_MSI, CAP_ID_MSIX};
use crate::config::{reg, Command, Status};
use crate::device::{DmaError, Interrupt, RecordedInterrupts};
use crate::layout::PciLayout;

/// 64 KiB of guest memory at GPA 0.
struct FakeMemory {
    bytes: Mutex<Vec<u8>>,
}

impl FakeMemory {
    const SIZE: usize = 64 << 10;

    fn new() -> Arc<FakeMemory> {
        Arc::new(FakeMemory {
            bytes: Mutex::new(vec![0; Self::SIZE]),
        })
    }

    fn range(gpa: u64, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let start = usize::try_from(gpa).ok().filter(|s| s + len <= Self::SIZE);
        start
            .map(|s| s..s + len)
            .ok_or(DmaError::OutOfRange { gpa, len })
    }

    fn slice(&self, gpa: usize, len: usize) -> Vec<u8> {
        self.bytes.lock().unwrap()[gpa..gpa + len].to_vec()
    }
}

impl DmaMemory for FakeMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = Self::range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock().unwrap()[r]);
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), DmaError> {
        let r = Self::range(gpa, buf.len())?;
        self.bytes.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
}

struct Rig {
    dev: TestDevice,
    irq: Arc<RecordedInterrupts>,
    mem: Arc<FakeMemory>,
}

fn rig() -> Rig {
    let irq = Arc::new(RecordedInterrupts::default());
    let mem = FakeMemory::new();
    let dev = TestDevice::new(mem.clone(), Some(irq.clone()));
    Rig { dev, irq, mem }
}

impl Rig {
    fn read(&mut self, offset: u64) -> u32 {
        self.dev.bar_read(0, offset, 4) as u32
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.dev.bar_write(0, offset, 4, value.into());
    }

    fn command(&mut self, bits: u16) {
        self.dev.config_write(reg::COMMAND, 2, bits.into());
    }

    fn msi(&self) -> u16 {
        self.dev.config.find_capability(CAP_ID_MSI).unwrap()
    }

    /// Programs MSI as a driver does: address, data, all 4 vectors, enable.
    fn enable_msi(&mut self, data: u16) {
        let at = self.msi();
        self.dev.config_write(at + 4, 4, 0xfee0_0000);
        self.dev.config_write(at + 8, 4, 0);
        self.dev.config_write(at + 0xc, 2, data.into());
        self.dev.config_write(at + 2, 2, 1 | 2 << 4);
    }

    fn mask(&mut self, bits: u32) {
        let at = self.msi();
        self.dev.config_write(at + 0x10, 4, bits);
    }

    fn dma(&mut self, gpa: u64, len: u32, command: u32) -> (u32, u32) {
        self.dev.bar_write(0, TestDevice::DMA_ADDR_LO, 8, gpa);
        self.write(TestDevice::DMA_LEN, len);
        self.write(TestDevice::DMA_CMD, command);
        (
            self.read(TestDevice::DMA_STATUS),
            self.read(TestDevice::DMA_RESULT),
        )
    }
}

fn msi(data: u32) -> Interrupt {
    Interrupt::Msi(MsiMessage {
        address: 0xfee0_0000,
        data,
    })
}

#[test]
fn it_identifies_itself_and_declares_a_4_kib_bar_and_msi() {
    let mut r = rig();
    let dev = &mut r.dev;
    assert_eq!(dev.config_read(0, 4), 0x0002_5741);
    assert_eq!(dev.config_read(reg::REVISION_ID, 4), 0xff00_0001);
    assert_eq!(dev.config_read(reg::INTERRUPT_PIN, 1), 1);
    dev.config_write(reg::BAR0, 4, 0xffff_ffff);
    assert_eq!(dev.config_read(reg::BAR0, 4), 0xffff_f000);
    let caps: Vec<u8> = dev.config.capabilities().map(|c| c.id).collect();
    assert_eq!(caps, [CAP_ID_MSI, CAP_ID_MSIX]);
    assert_eq!(dev.msi.vectors(&dev.config), 1);
    assert_eq!(dev.bar_regions().len(), 1);
}

#[test]
fn registers_read_back_at_every_width() {
    let mut r = rig();
    assert_eq!(r.read(TestDevice::ID), TestDevice::ID_VALUE);
    assert_eq!(r.dev.bar_read(0, TestDevice::ID, 1), u64::from(b'W'));
    assert_eq!(r.dev.bar_read(0, TestDevice::ID + 2, 2), 0x4454);
    r.write(TestDevice::SCRATCH, 0xdead_beef);
    assert_eq!(r.read(TestDevice::SCRATCH), 0xdead_beef);
    // Partial writes are dropped; unaligned reads across registers read 0.
    r.dev.bar_write(0, TestDevice::SCRATCH, 2, 0);
    assert_eq!(r.read(TestDevice::SCRATCH), 0xdead_beef);
    assert_eq!(r.dev.bar_read(0, TestDevice::ID + 3, 2), 0);
    r.dev
        .bar_write(0, TestDevice::DMA_ADDR_LO, 8, 0x1_2345_6789);
    assert_eq!(r.dev.bar_read(0, TestDevice::DMA_ADDR_LO, 8), 0x1_2345_6789);
    assert_eq!(r.read(TestDevice::DMA_ADDR_HI), 1);
    assert_eq!(r.read(TestDevice::DOORBELL), 0);
    assert_eq!(r.read(0xffc), 0);
    assert_eq!(r.read(TestDevice::DMA_STATUS), TestDevice::DMA_IDLE);
    assert_eq!(r.dev.bar_read(1, 0, 4), 0xffff_ffff);
}

#[test]
fn without_msi_the_doorbell_asserts_intx_until_acknowledged() {
    let mut r = rig();
    r.write(TestDevice::DOORBELL, 0);
    assert_eq!(r.irq.take(), [Interrupt::Intx(true)]);
    assert_ne!(r.dev.config.status().0 & Status::INTERRUPT, 0);
    assert_eq!(r.read(TestDevice::IRQ_STATUS), 1);
    // Level-triggered: ringing again changes nothing.
    r.write(TestDevice::DOORBELL, 3);
    assert!(r.irq.take().is_empty());
    r.write(TestDevice::IRQ_STATUS, 1);
    assert_eq!(r.irq.take(), [Interrupt::Intx(false)]);
    assert_eq!(r.dev.config.status().0 & Status::INTERRUPT, 0);
}

#[test]
fn intx_disable_holds_the_line_low_but_keeps_the_status() {
    let mut r = rig();
    r.command(Command::INTX_DISABLE);
    r.write(TestDevice::DOORBELL, 0);
    assert!(r.irq.take().is_empty());
    assert_ne!(r.dev.config.status().0 & Status::INTERRUPT, 0);
    r.command(0);
    assert_eq!(r.irq.take(), [Interrupt::Intx(true)]);
}

#[test]
fn with_msi_the_doorbell_sends_vector_n() {
    let mut r = rig();
    r.command(Command::BUS_MASTER);
    r.enable_msi(0x40);
    r.write(TestDevice::DOORBELL, 2);
    r.write(TestDevice::DOORBELL, 0);
    // Vector 7 is beyond the 4 enabled: nothing.
    r.write(TestDevice::DOORBELL, 7);
    assert_eq!(r.irq.take(), [msi(0x42), msi(0x40)]);
    assert_eq!(r.read(TestDevice::IRQ_STATUS), 0);
}

#[test]
fn msi_needs_bus_mastering() {
    let mut r = rig();
    r.enable_msi(0x40);
    r.write(TestDevice::DOORBELL, 1);
    assert!(r.irq.take().is_empty());
}

#[test]
fn a_masked_vector_is_sent_when_unmasked() {
    let mut r = rig();
    r.command(Command::BUS_MASTER);
    r.enable_msi(0x50);
    r.mask(0b1000);
    r.write(TestDevice::DOORBELL, 3);
    r.write(TestDevice::DOORBELL, 1);
    assert_eq!(r.irq.take(), [msi(0x51)]);
    r.mask(0);
    assert_eq!(r.irq.take(), [msi(0x53)]);
    r.mask(0);
    assert!(r.irq.take().is_empty());
}

#[test]
fn enabling_msi_releases_a_raised_intx() {
    let mut r = rig();
    r.write(TestDevice::DOORBELL, 0);
    assert_eq!(r.irq.take(), [Interrupt::Intx(true)]);
    r.enable_msi(0x40);
    assert_eq!(r.irq.take(), [Interrupt::Intx(false)]);
}

#[test]
fn fill_writes_the_pattern_into_guest_memory() {
    let mut r = rig();
    r.command(Command::BUS_MASTER);
    assert_eq!(
        r.dma(0x100, 16, TestDevice::DMA_FILL),
        (TestDevice::DMA_DONE, 16)
    );
    let expected: Vec<u8> = (0..16).map(dma_pattern).collect();
    assert_eq!(r.mem.slice(0x100, 16), expected);
    // Nothing around the buffer was touched.
    assert_eq!(r.mem.slice(0xff, 1), [0]);
    assert_eq!(r.mem.slice(0x110, 1), [0]);
}

#[test]
fn sum_reads_guest_memory() {
    let mut r = rig();
    r.command(Command::BUS_MASTER);
    r.mem.write(0x2000, &[1, 2, 3, 250]).unwrap();
    assert_eq!(
        r.dma(0x2000, 4, TestDevice::DMA_SUM),
        (TestDevice::DMA_DONE, 256)
    );
    // The whole of memory, the longest DMA allowed.
    r.mem.write(0, &[0xff; FakeMemory::SIZE]).unwrap();
    let (status, sum) = r.dma(0, TestDevice::MAX_DMA_LEN, TestDevice::DMA_SUM);
    assert_eq!((status, sum), (TestDevice::DMA_DONE, 0xff * (64 << 10)));
}

#[test]
fn dma_errors_are_reported_and_touch_nothing() {
    let mut r = rig();
    assert_eq!(
        r.dma(0x100, 16, TestDevice::DMA_FILL),
        (TestDevice::DMA_ERR_BUS_MASTER, 0)
    );
    assert_eq!(r.mem.slice(0x100, 16), [0; 16]);
    r.command(Command::BUS_MASTER);
    let cases = [
        (0x100, 0, TestDevice::DMA_FILL, TestDevice::DMA_ERR_LENGTH),
        (
            0x100,
            TestDevice::MAX_DMA_LEN + 1,
            TestDevice::DMA_FILL,
            TestDevice::DMA_ERR_LENGTH,
        ),
        (0xfff8, 16, TestDevice::DMA_FILL, TestDevice::DMA_ERR_MEMORY),
        (
            u64::MAX - 4,
            16,
            TestDevice::DMA_SUM,
            TestDevice::DMA_ERR_MEMORY,
        ),
        (0x100, 16, 3, TestDevice::DMA_ERR_COMMAND),
    ];
    for (gpa, len, command, status) in cases {
        assert_eq!(r.dma(gpa, len, command), (status, 0), "{gpa:#x}+{len}");
    }
    assert_eq!(r.mem.slice(0xfff8, 8), [0; 8]);
}

#[test]
fn reset_clears_registers_and_lowers_intx() {
    let mut r = rig();
    r.command(Command::BUS_MASTER);
    r.write(TestDevice::SCRATCH, 7);
    r.write(TestDevice::DOORBELL, 0);
    assert_eq!(r.irq.take(), [Interrupt::Intx(true)]);
    r.dev.reset();
    assert_eq!(r.irq.take(), [Interrupt::Intx(false)]);
    assert_eq!(r.read(TestDevice::SCRATCH), 0);
    assert_eq!(r.dev.config.command(), Command(0));
    assert!(!r.dev.msi.is_enabled(&r.dev.config));
}

#[test]
fn a_guest_reaches_it_through_the_bus() {
    let r = rig();
    let mut bus = PciBus::new(PciLayout::default());
    let bdf = bus.add(Box::new(r.dev)).unwrap();
    bus.assign_bars().unwrap();
    let bar = u64::from(bus.config_read(bdf, reg::BAR0, 4) & !0xf);
    assert_eq!(bar, PciLayout::MMIO32.base);
    let enable = Command::MEMORY_SPACE | Command::BUS_MASTER;
    bus.config_write(bdf, reg::COMMAND, 2, enable.into());
    assert_eq!(
        bus.mmio_read(bar + TestDevice::ID, 4),
        Some(TestDevice::ID_VALUE.into())
    );
    assert!(bus.mmio_write(bar + TestDevice::DOORBELL, 4, 0));
    assert_eq!(r.irq.take(), [Interrupt::Intx(true)]);
}

#[test]
fn with_msix_the_doorbell_sends_the_table_entry_and_masking_holds_it() {
    let mut r = rig();
    r.command(Command::MEMORY_SPACE | Command::BUS_MASTER);
    let at = r.dev.config.find_capability(CAP_ID_MSIX).unwrap();
    // Entry 1: vector 0x41 to LAPIC 0, still masked.
    let entry = TestDevice::MSIX_TABLE + 16;
    r.dev.bar_write(0, entry, 8, 0xfee0_0000);
    r.write(entry + 8, 0x41);
    // MSI-X on: the doorbell finds the entry masked and sets its PBA bit.
    r.dev.config_write(at + 2, 2, 0x8000);
    r.write(TestDevice::DOORBELL, 1);
    assert!(r.irq.take().is_empty());
    assert_eq!(r.read(TestDevice::MSIX_PBA), 0b10);
    // Unmasking the entry releases it once.
    r.write(entry + 12, 0);
    assert_eq!(r.irq.take(), [msi(0x41)]);
    assert_eq!(r.read(TestDevice::MSIX_PBA), 0);
    r.write(TestDevice::DOORBELL, 1);
    assert_eq!(r.irq.take(), [msi(0x41)]);
    // The function mask holds it until cleared; INTx stays low throughout.
    r.dev.config_write(at + 2, 2, 0xc000);
    r.write(TestDevice::DOORBELL, 1);
    assert!(r.irq.take().is_empty());
    r.dev.config_write(at + 2, 2, 0x8000);
    assert_eq!(r.irq.take(), [msi(0x41)]);
    assert_eq!(r.read(TestDevice::IRQ_STATUS), 0);
}

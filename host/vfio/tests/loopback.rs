//! The passthrough path end to end over a real vfio-user socket: the
//! test device served in a thread, `VfioUserDevice` and `VfioPciFunction`
//! on this side, guest RAM in a memfd.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use wasmvisor_vfio::GuestRam;

use vm_memory::{Bytes, GuestAddress};
use wasmvisor_pci::{
    dma_pattern, reg, Command, DmaDomain, Interrupt, MsiMessage, PciDevice, RecordedInterrupts,
    TestDevice, CAP_ID_MSI,
};
use wasmvisor_vfio::{
    dma_map_guest_memory, memfd_guest_memory, PassthroughDevice, TestDeviceBackend,
    TestDeviceServer, VfioPciFunction, VfioUserDevice,
};

struct Loopback {
    function: VfioPciFunction,
    sink: Arc<RecordedInterrupts>,
    ram: GuestRam,
    server: Option<JoinHandle<Vec<(u64, u64)>>>,
    _dir: PathBuf,
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn loopback(name: &str) -> Loopback {
    let dir = std::env::temp_dir().join(format!("wasmvisor-vfio-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("testdev.sock");
    let mut backend = TestDeviceBackend::new().unwrap();
    let server = TestDeviceServer::bind(&socket, &backend).unwrap();
    let handle = std::thread::spawn(move || {
        server.serve_one(&mut backend).unwrap();
        backend.dma_history().to_vec()
    });
    let device: Arc<dyn PassthroughDevice> = Arc::new(VfioUserDevice::connect(&socket).unwrap());
    let ram = memfd_guest_memory(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    dma_map_guest_memory(device.as_ref(), &ram, &DmaDomain::unrestricted()).unwrap();
    let sink = Arc::new(RecordedInterrupts::default());
    let function = VfioPciFunction::new(device, sink.clone()).unwrap();
    Loopback {
        function,
        sink,
        ram,
        server: Some(handle),
        _dir: dir,
    }
}

fn msi_offset(f: &mut VfioPciFunction) -> u16 {
    let mut at = f.config_read(reg::CAPABILITIES, 1) as u16;
    while at != 0 {
        if f.config_read(at, 1) as u8 == CAP_ID_MSI {
            return at;
        }
        at = f.config_read(at + 1, 1) as u16;
    }
    panic!("no MSI capability");
}

#[test]
fn identity_and_bar_sizing_come_through_the_shadow() {
    let mut l = loopback("identity");
    let f = &mut l.function;
    assert_eq!(f.config_read(reg::VENDOR_ID, 2), 0x5741);
    assert_eq!(f.config_read(reg::DEVICE_ID, 2), 0x0002);
    assert_eq!(f.config_read(reg::CLASS_CODE + 2, 1), 0xff);
    f.config_write(reg::BAR0, 4, 0xffff_ffff);
    assert_eq!(
        f.config_read(reg::BAR0, 4),
        !(TestDevice::BAR_SIZE as u32 - 1)
    );
    f.config_write(reg::BAR0, 4, 0xe800_0000);
    assert_eq!(f.bar_regions()[0].address, 0xe800_0000);
    assert_eq!(f.bar_regions()[0].bar.size(), TestDevice::BAR_SIZE);
}

#[test]
fn bar0_registers_answer_through_the_socket() {
    let mut l = loopback("bar0");
    let f = &mut l.function;
    assert_eq!(
        f.bar_read(0, TestDevice::ID, 4),
        u64::from(TestDevice::ID_VALUE)
    );
    assert_eq!(
        f.bar_read(0, TestDevice::ID, 4).to_le_bytes()[..4],
        *b"WVTD"
    );
    f.bar_write(0, TestDevice::SCRATCH, 4, 0x1234_5678);
    assert_eq!(f.bar_read(0, TestDevice::SCRATCH, 4), 0x1234_5678);
    assert_eq!(f.bar_read(0, TestDevice::SCRATCH, 2), 0x5678);
}

#[test]
fn doorbell_with_msi_enabled_delivers_the_programmed_message() {
    let mut l = loopback("msi");
    let f = &mut l.function;
    let msi = msi_offset(f);
    f.config_write(
        reg::COMMAND,
        2,
        (Command::MEMORY_SPACE | Command::BUS_MASTER).into(),
    );
    // 64-bit address, per-vector masking: data at 0x0c.
    f.config_write(msi + 4, 4, 0xfee0_1000);
    f.config_write(msi + 8, 4, 0);
    f.config_write(msi + 0x0c, 2, 0x40);
    // Enable with 2 vectors.
    f.config_write(msi + 2, 2, 1 | 1 << 4);
    f.bar_write(0, TestDevice::DOORBELL, 4, 1);
    let interrupts = f.interrupts();
    assert_eq!(interrupts.poll(), 1);
    assert_eq!(
        l.sink.take(),
        [Interrupt::Msi(MsiMessage {
            address: 0xfee0_1000,
            data: 0x41
        })]
    );
    // Masked: pending in the shadow, sent on unmask.
    f.config_write(msi + 0x10, 4, 0b01);
    f.bar_write(0, TestDevice::DOORBELL, 4, 0);
    assert_eq!(interrupts.poll(), 1);
    assert!(l.sink.take().is_empty());
    f.config_write(msi + 0x10, 4, 0);
    assert_eq!(
        l.sink.take(),
        [Interrupt::Msi(MsiMessage {
            address: 0xfee0_1000,
            data: 0x40
        })]
    );
}

#[test]
fn doorbell_without_msi_raises_intx_until_serviced() {
    let mut l = loopback("intx");
    let f = &mut l.function;
    f.config_write(reg::COMMAND, 2, Command::MEMORY_SPACE.into());
    f.bar_write(0, TestDevice::DOORBELL, 4, 0);
    let interrupts = f.interrupts();
    interrupts.poll();
    assert_eq!(l.sink.take(), [Interrupt::Intx(true)]);
    // The driver reads the status (the line goes down and is unmasked,
    // the device still wants service so it fires again), then clears it.
    assert_eq!(f.bar_read(0, TestDevice::IRQ_STATUS, 4), 1);
    interrupts.poll();
    f.bar_write(0, TestDevice::IRQ_STATUS, 4, 1);
    assert_eq!(interrupts.poll(), 0);
    assert_eq!(
        l.sink.take(),
        [
            Interrupt::Intx(false),
            Interrupt::Intx(true),
            Interrupt::Intx(false)
        ]
    );
    assert!(!interrupts.intx_asserted());
}

#[test]
fn dma_fill_lands_in_memfd_guest_ram() {
    let mut l = loopback("dma");
    let f = &mut l.function;
    f.config_write(
        reg::COMMAND,
        2,
        (Command::MEMORY_SPACE | Command::BUS_MASTER).into(),
    );
    f.bar_write(0, TestDevice::DMA_ADDR_LO, 4, 0x8000);
    f.bar_write(0, TestDevice::DMA_ADDR_HI, 4, 0);
    f.bar_write(0, TestDevice::DMA_LEN, 4, 64);
    f.bar_write(0, TestDevice::DMA_CMD, 4, TestDevice::DMA_FILL.into());
    assert_eq!(
        f.bar_read(0, TestDevice::DMA_STATUS, 4),
        u64::from(TestDevice::DMA_DONE)
    );
    let mut buf = [0u8; 64];
    l.ram.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
    let expected: Vec<u8> = (0..64).map(dma_pattern).collect();
    assert_eq!(buf.to_vec(), expected);
    // And the other way: SUM reads what the guest wrote.
    l.ram
        .write_slice(&[1, 2, 3, 4], GuestAddress(0x9000))
        .unwrap();
    f.bar_write(0, TestDevice::DMA_ADDR_LO, 4, 0x9000);
    f.bar_write(0, TestDevice::DMA_LEN, 4, 4);
    f.bar_write(0, TestDevice::DMA_CMD, 4, TestDevice::DMA_SUM.into());
    assert_eq!(f.bar_read(0, TestDevice::DMA_RESULT, 4), 10);
}

#[test]
fn the_server_saw_the_dma_map_and_resets_on_disconnect() {
    let mut l = loopback("teardown");
    let server = l.server.take().unwrap();
    drop(l);
    assert_eq!(server.join().unwrap(), [(0, 0x10_0000)]);
}

#[test]
fn the_binary_serves_the_device() {
    let dir = std::env::temp_dir().join(format!("wasmvisor-vfio-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("testdev.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wasmvisor-vfio-user-testdev"))
        .arg("--socket")
        .arg(&socket)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let device: Arc<dyn PassthroughDevice> = Arc::new(VfioUserDevice::connect(&socket).unwrap());
    let sink = Arc::new(RecordedInterrupts::default());
    let mut f = VfioPciFunction::new(device, sink).unwrap();
    assert_eq!(f.config_read(reg::DEVICE_ID, 2), 0x0002);
    assert_eq!(
        f.bar_read(0, TestDevice::ID, 4),
        u64::from(TestDevice::ID_VALUE)
    );
    drop(f);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

//! The PCI segment on KVM (`--device`): `wasmvisor-pci`'s bus behind config
//! mechanism #1 (ports 0xCF8-0xCFF), ECAM and the BAR windows; the
//! emulated test device (MSI through `KVM_SIGNAL_MSI`, INTx through
//! `KVM_IRQ_LINE`, DMA into guest RAM), or a VFIO or vfio-user device
//! through `wasmvisor-vfio` (interrupts as irqfds with GSI routes, BAR
//! memory as memslots, `bar_maps`). Either kind reaches by DMA only the
//! guest RAM inside the VM's `DmaDomain` (`--dma-window`). Policies see
//! the same accesses first: one that subscribes to a device's ECAM page
//! or a BAR range can audit, answer or veto them before the device does
//! (`docs/pci.md`).

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};
use wasmvisor_exit::GuestRam;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use wasmvisor_exit::{
    size_mask, Completion, Direction, ExitEvent, ExitKind, GpaRange, InterruptLines,
};
use wasmvisor_kvm::{IrqRoutes, Vm};
pub use wasmvisor_pci::DmaDomain;
use wasmvisor_pci::{
    ConfinedDma, DmaError, DmaMemory, InterruptError, InterruptSink, IntxPin, MsiMessage, PciBus,
    PciDevice, PciLayout, TestDevice, CONFIG_PORTS,
};

use wasmvisor_vfio::{
    dma_map_guest_memory, missing_support, sysfs_path, InterruptThread, Interrupts, IrqBypass,
    KernelVfio, PassthroughDevice, VfioPciFunction, VfioUserDevice,
};

use crate::config::DeviceSpec;
use crate::devices::bar_maps::BarMaps;
use crate::devices::builtin::BuiltinDevice;
use crate::error::VmmError;
use crate::stats::DeviceStats;

/// Guest RAM as the devices' DMA sees it (IOVA = GPA).
pub struct GuestDma {
    memory: GuestRam,
}

impl DmaMemory for GuestDma {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let len = buf.len();
        if !self.memory.check_range(GuestAddress(gpa), len) {
            return Err(DmaError::OutOfRange { gpa, len });
        }
        self.memory
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| DmaError::OutOfRange { gpa, len })
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), DmaError> {
        let len = buf.len();
        if !self.memory.check_range(GuestAddress(gpa), len) {
            return Err(DmaError::OutOfRange { gpa, len });
        }
        self.memory
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| DmaError::OutOfRange { gpa, len })
    }
}

/// One device's interrupts on KVM: MSI messages to the in-kernel LAPICs,
/// INTx on its IOAPIC line.
pub struct KvmInterrupts {
    vm: Arc<Vm>,
    intx_line: u32,
}

impl InterruptSink for KvmInterrupts {
    fn send_msi(&self, message: MsiMessage) -> Result<(), InterruptError> {
        self.vm
            .signal_msi(message.address, message.data)
            .map(|_| ())
            .map_err(|e| InterruptError {
                reason: e.to_string(),
            })
    }

    fn set_intx(&self, asserted: bool) -> Result<(), InterruptError> {
        self.vm
            .set_level(self.intx_line, asserted)
            .map_err(|reason| InterruptError { reason })
    }
}

/// KVM's interrupt bypass for a passthrough function: each routed MSI
/// eventfd is an irqfd on a GSI of its own whose route carries the
/// guest's message; INTx is an irqfd with a resample eventfd on the
/// function's IOAPIC line.
pub struct KvmBypass {
    routes: Arc<IrqRoutes>,
    intx_line: u32,
    /// Raw eventfd → its GSI, for the eventfds now attached.
    gsis: Mutex<HashMap<i32, u32>>,
}

fn kvm_error(e: wasmvisor_kvm::KvmError) -> InterruptError {
    InterruptError {
        reason: e.to_string(),
    }
}

impl IrqBypass for KvmBypass {
    fn attach_msi(&self, fd: &EventFd, message: MsiMessage) -> Result<(), InterruptError> {
        let mut gsis = self.gsis.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&gsi) = gsis.get(&fd.as_raw_fd()) {
            // KVM re-reads the route for irqfds already bound to it.
            return self
                .routes
                .set_msi(gsi, message.address, message.data)
                .map_err(kvm_error);
        }
        let gsi = self.routes.allocate().map_err(kvm_error)?;
        let bound = self
            .routes
            .set_msi(gsi, message.address, message.data)
            .and_then(|()| self.routes.register_irqfd(fd, gsi));
        if let Err(e) = bound {
            let _ = self.routes.free(gsi);
            return Err(kvm_error(e));
        }
        gsis.insert(fd.as_raw_fd(), gsi);
        Ok(())
    }

    fn detach_msi(&self, fd: &EventFd) -> Result<(), InterruptError> {
        let mut gsis = self.gsis.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(gsi) = gsis.remove(&fd.as_raw_fd()) else {
            return Ok(());
        };
        let unbound = self.routes.unregister_irqfd(fd, gsi);
        self.routes.free(gsi).map_err(kvm_error)?;
        unbound.map_err(kvm_error)
    }

    fn attach_intx(&self, fd: &EventFd, resample: &EventFd) -> Result<(), InterruptError> {
        self.routes
            .register_irqfd_with_resample(fd, resample, self.intx_line)
            .map_err(kvm_error)
    }

    fn detach_intx(&self, fd: &EventFd) -> Result<(), InterruptError> {
        self.routes
            .unregister_irqfd(fd, self.intx_line)
            .map_err(kvm_error)
    }
}

/// The PCI segment as a built-in device.
pub struct PciPlatform {
    bus: Mutex<PciBus>,
    layout: PciLayout,
    /// One thread per passthrough device turning its interrupt eventfds
    /// into MSIs and INTx levels; they stop when the platform is dropped.
    _interrupt_threads: Vec<InterruptThread>,
    /// What was DMA-mapped for passthrough devices (`dma-mappings`).
    dma_mapped: Vec<GpaRange>,
    /// Each passthrough device's `--device` label and interrupt path.
    passthrough: Vec<(String, Arc<Interrupts>)>,
    /// Passthrough BAR memory mapped into the guest, and the bus route
    /// generation it was computed for. Locked after `bus`.
    maps: Mutex<(BarMaps, u64)>,
}

impl PciPlatform {
    /// The segment with the devices `specs` asks for, BARs assigned, each
    /// device able to reach by DMA only the guest RAM inside `domain`.
    pub fn build(
        vm: &Arc<Vm>,
        ram_size: u64,
        specs: &[DeviceSpec],
        domain: &DmaDomain,
    ) -> Result<Self, VmmError> {
        let layout = PciLayout::default();
        layout
            .check(ram_size)
            .map_err(|e| VmmError::Usage(format!("PCI layout: {e}")))?;
        let mut bus = PciBus::new(layout);
        let mut threads = Vec::new();
        let mut passthrough_irqs = Vec::new();
        for spec in specs {
            let slot = bus
                .free_slot()
                .ok_or_else(|| VmmError::Usage("--device: the PCI bus is full".into()))?;
            let device = match spec {
                DeviceSpec::Test => {
                    let ram = Arc::new(GuestDma {
                        memory: vm.memory().clone(),
                    });
                    let dma = Arc::new(ConfinedDma::new(ram, domain.clone()));
                    let irq = Arc::new(KvmInterrupts {
                        vm: Arc::clone(vm),
                        intx_line: bus.intx_line(slot, IntxPin::A),
                    });
                    Box::new(TestDevice::new(dma, Some(irq))) as Box<dyn PciDevice>
                }
                DeviceSpec::Vfio(_) | DeviceSpec::VfioUser(_) => {
                    let intx_line = bus.intx_line(slot, IntxPin::A);
                    let irq = Arc::new(KvmInterrupts {
                        vm: Arc::clone(vm),
                        intx_line,
                    });
                    let bypass = Arc::new(KvmBypass {
                        routes: vm.irq_routes(),
                        intx_line,
                        gsis: Mutex::new(HashMap::new()),
                    });
                    let (label, function, thread) = passthrough(vm, spec, domain, irq, bypass)?;
                    passthrough_irqs.push((label, function.interrupts()));
                    threads.push(thread);
                    Box::new(function)
                }
            };
            bus.add_at(slot, device)
                .map_err(|e| VmmError::Usage(format!("--device: {e}")))?;
        }
        bus.assign_bars()
            .map_err(|e| VmmError::Usage(format!("--device: cannot place the BARs: {e}")))?;
        // Every passthrough device gets the guest RAM inside the domain at
        // IOVA = GPA.
        let dma_mapped = if threads.is_empty() {
            Vec::new()
        } else {
            wasmvisor_vfio::dma_ranges(vm.memory(), domain)
                .iter()
                .map(|r| GpaRange {
                    base: r.iova,
                    len: r.size,
                })
                .collect()
        };
        let mut maps = (BarMaps::new(vm.memslots()), 0);
        Self::remap(&mut maps, &bus);
        Ok(PciPlatform {
            maps: Mutex::new(maps),
            bus: Mutex::new(bus),
            layout,
            _interrupt_threads: threads,
            dma_mapped,
            passthrough: passthrough_irqs,
        })
    }

    /// What each passthrough device's interrupts and BARs did so far.
    pub fn device_stats(&self) -> Vec<DeviceStats> {
        self.passthrough
            .iter()
            .map(|(label, irqs)| DeviceStats {
                device: label.clone(),
                irq_routes: irqs.routes_made(),
                irqs_by_vmm: irqs.delivered_by_vmm(),
                mapped_bar_bytes: self.lock_maps().0.peak_bytes(),
                dma_mapped_bytes: self.dma_mapped.iter().map(|r| r.len).sum(),
            })
            .collect()
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, (BarMaps, u64)> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remaps passthrough BAR memory if the guest moved, enabled or
    /// disabled a BAR since the last look.
    fn follow_bars(&self, bus: &PciBus) {
        let mut maps = self.lock_maps();
        if maps.1 != bus.generation() {
            Self::remap(&mut maps, bus);
        }
    }

    /// Installs the memslots the bus's BAR routes call for now.
    fn remap(maps: &mut (BarMaps, u64), bus: &PciBus) {
        maps.0.sync(&bus.direct_maps());
        maps.1 = bus.generation();
    }

    /// The guest-physical ranges passthrough devices can reach by DMA.
    pub fn dma_mappings(&self) -> &[GpaRange] {
        &self.dma_mapped
    }
}

/// Opens a passthrough device (kernel VFIO, or a vfio-user server),
/// DMA-maps the guest RAM inside `domain` into it (IOVA = GPA; vfio-user
/// needs the memfd-backed RAM `machine.rs` makes), puts it behind a
/// `VfioPciFunction` and starts the thread that delivers its interrupts.
fn passthrough(
    vm: &Arc<Vm>,
    spec: &DeviceSpec,
    domain: &DmaDomain,
    irq: Arc<KvmInterrupts>,
    bypass: Arc<KvmBypass>,
) -> Result<(String, VfioPciFunction, InterruptThread), VmmError> {
    let (label, device): (String, Result<Arc<dyn PassthroughDevice>, String>) = match spec {
        DeviceSpec::Vfio(target) => {
            let label = format!("vfio={target}");
            let path = sysfs_path(target);
            if let Some(why) = missing_support(&path) {
                return Err(VmmError::Usage(format!("--device {label}: {why}")));
            }
            let device = KernelVfio::open(&path)
                .map(|d| Arc::new(d) as Arc<dyn PassthroughDevice>)
                .map_err(|e| format!("cannot open: {e}"));
            (label, device)
        }
        DeviceSpec::VfioUser(socket) => (
            format!("vfio-user={}", socket.display()),
            VfioUserDevice::connect(socket)
                .map(|d| Arc::new(d) as Arc<dyn PassthroughDevice>)
                .map_err(|e| format!("cannot connect: {e}")),
        ),
        DeviceSpec::Test => {
            return Err(VmmError::Usage(
                "--device test is emulated, not passed through".into(),
            ))
        }
    };
    let err = |what: &str, e: String| VmmError::Usage(format!("--device {label}: {what}{e}"));
    let device = device.map_err(|e| err("", e))?;
    dma_map_guest_memory(device.as_ref(), vm.memory(), domain)
        .map_err(|e| err("cannot DMA-map guest RAM: ", e.to_string()))?;
    let function = VfioPciFunction::with_bypass(device, irq, Some(bypass))
        .map_err(|e| err("cannot set up the device: ", e.to_string()))?;
    let thread = function
        .interrupts()
        .spawn()
        .map_err(|e| err("cannot start its interrupt thread: ", e.to_string()))?;
    Ok((label, function, thread))
}

fn to_range(w: &wasmvisor_pci::Window) -> GpaRange {
    GpaRange {
        base: w.base,
        len: w.size,
    }
}

impl BuiltinDevice for PciPlatform {
    fn set_policy_mmio(&self, ranges: &[GpaRange]) {
        let bus = self.bus.lock().unwrap_or_else(PoisonError::into_inner);
        let mut maps = self.lock_maps();
        maps.0.set_trapped(ranges.to_vec());
        Self::remap(&mut maps, &bus);
    }

    fn claims(&self) -> (Vec<RangeInclusive<u16>>, Vec<GpaRange>) {
        let io = &self.layout.io;
        let ports = vec![
            *CONFIG_PORTS.start()..=*CONFIG_PORTS.end(),
            io.base as u16..=(io.end() - 1).min(0xffff) as u16,
        ];
        let mut mmio = vec![to_range(&self.layout.ecam), to_range(&self.layout.mmio32)];
        mmio.extend(self.layout.mmio64.as_ref().map(to_range));
        (ports, mmio)
    }

    fn handle(&self, event: &ExitEvent, completion: &mut Completion) {
        // A poisoned lock means a vCPU thread panicked inside a device;
        // the bus state is plain data, so keep serving.
        let mut bus = self.bus.lock().unwrap_or_else(PoisonError::into_inner);
        match event.kind {
            ExitKind::Io(io) => match io.direction {
                Direction::Read => {
                    let v = bus.pio_read(io.port, io.size).unwrap_or(u32::MAX);
                    completion.read = Some(u64::from(v));
                }
                Direction::Write => {
                    bus.pio_write(io.port, io.size, io.data);
                    self.follow_bars(&bus);
                }
            },
            ExitKind::Mmio(m) => match m.direction {
                Direction::Read => {
                    let v = bus.mmio_read(m.gpa, m.size).unwrap_or(u64::MAX);
                    completion.read = Some(v & size_mask(m.size));
                }
                Direction::Write => {
                    bus.mmio_write(m.gpa, m.size, m.data);
                    self.follow_bars(&bus);
                }
            },
            _ => {}
        }
    }
}

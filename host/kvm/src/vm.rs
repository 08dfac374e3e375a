//! The VM: KVM handle, guest RAM and VM-wide configuration (MSR filter).

use std::ops::RangeInclusive;
use std::sync::{Arc, OnceLock};
use wasmvisor_exit::GuestRam;

use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_X86_USER_SPACE_MSR, KVM_MAX_CPUID_ENTRIES,
    KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::cpuid::CpuidEntry;
use crate::irq_routes::IrqRoutes;
use crate::memslots::MemSlots;
use crate::vcpu::StateCaps;
use crate::{KvmError, Vcpu};

/// Guest RAM ends below this address; above it lies the MMIO hole where
/// every access exits to user space (3 GiB, as on a PC).
pub const MMIO_HOLE_START: u64 = 0xC000_0000;

/// A KVM VM with one contiguous RAM slot at GPA 0.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
    memory: GuestRam,
    slots: Arc<MemSlots>,
    routes: Arc<IrqRoutes>,
    sync_regs: bool,
    caps: StateCaps,
    /// Whether `create_pc_platform` made the in-kernel irqchip and PIT.
    pc_platform: std::sync::atomic::AtomicBool,
    /// The MSRs a vCPU snapshot saves, found once (`saved_msrs`).
    saved_msrs: OnceLock<Vec<u32>>,
}

impl Vm {
    /// Opens `/dev/kvm`, creates a VM with `ram_size` bytes of RAM at GPA 0
    /// and turns on user-space MSR exits.
    pub fn new(ram_size: u64) -> Result<Vm, KvmError> {
        Self::create(ram_size, None)
    }

    /// Like [`Vm::new`], with guest RAM `memory`, which must be one region
    /// of `ram_size` bytes at GPA 0: RAM that devices in other processes
    /// map too (memfd-backed, for vfio-user DMA).
    pub fn with_memory(ram_size: u64, memory: GuestRam) -> Result<Vm, KvmError> {
        let fits =
            memory.num_regions() == 1 && memory.last_addr().0.checked_add(1) == Some(ram_size);
        if !fits {
            return Err(KvmError::BadBootState(format!(
                "guest RAM must be one region of {ram_size} bytes at GPA 0"
            )));
        }
        Self::create(ram_size, Some(memory))
    }

    fn create(ram_size: u64, memory: Option<GuestRam>) -> Result<Vm, KvmError> {
        if ram_size == 0 || ram_size > MMIO_HOLE_START || !ram_size.is_multiple_of(4096) {
            return Err(KvmError::BadBootState(format!(
                "guest RAM must be a non-zero multiple of 4 KiB up to {} MiB, not {ram_size} bytes",
                MMIO_HOLE_START >> 20
            )));
        }
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let fd = kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR"),
            (Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let sync_regs = kvm.check_extension(Cap::SyncRegs);
        let caps = StateCaps {
            xsave: kvm.check_extension(Cap::Xsave),
            xcrs: kvm.check_extension(Cap::Xcrs),
        };
        // Needed by Intel VT-x for real mode; harmless elsewhere.
        fd.set_tss_address(0xfffb_d000)
            .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
        let memory = match memory {
            Some(m) => m,
            None => anonymous_memory(ram_size)?,
        };
        let host = memory
            .get_host_address(GuestAddress(0))
            .map_err(|e| KvmError::Memory {
                size: ram_size,
                reason: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram_size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a mapping of `ram_size` bytes (one
        // region, checked above or made by `anonymous_memory`) owned by
        // `memory`, which the `Vm` keeps alive for as long as the VM fd (and
        // so the memslot) exists.
        unsafe { fd.set_user_memory_region(region) }
            .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        let cap = kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            args: [
                u64::from(
                    KVM_MSR_EXIT_REASON_FILTER
                        | KVM_MSR_EXIT_REASON_UNKNOWN
                        | KVM_MSR_EXIT_REASON_INVAL,
                ),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        fd.enable_cap(&cap)
            .map_err(KvmError::ioctl("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
        let fd = Arc::new(fd);
        let slots = Arc::new(MemSlots::new(Arc::clone(&fd), host as u64, ram_size));
        let routes = Arc::new(IrqRoutes::new(Arc::clone(&fd)));
        Ok(Vm {
            kvm,
            fd,
            memory,
            slots,
            routes,
            sync_regs,
            caps,
            pc_platform: Default::default(),
            saved_msrs: OnceLock::new(),
        })
    }

    /// The PC platform a Linux kernel expects: the in-kernel PIC, IOAPIC
    /// and local APICs, and the PIT. Call before creating any vCPU. With
    /// it, HLT and the interrupt controllers' ports never reach user space.
    pub fn create_pc_platform(&self) -> Result<(), KvmError> {
        // Below the TSS pages set in `new`, as Intel VT-x needs.
        self.fd
            .set_identity_map_address(0xfffb_c000)
            .map_err(KvmError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(KvmError::ioctl("KVM_CREATE_PIT2"))?;
        self.pc_platform
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether the in-kernel irqchip and PIT exist (`create_pc_platform`).
    pub fn has_pc_platform(&self) -> bool {
        self.pc_platform.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The KVM VM fd, for the state this crate saves and restores.
    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The MSRs a vCPU snapshot saves: those KVM lists as saved across
    /// migration (`KVM_GET_MSR_INDEX_LIST`) that `vcpu` can actually read
    /// here; found once per VM, by reading them all and dropping each one
    /// KVM stops at.
    pub fn saved_msrs(&self, vcpu: &Vcpu) -> Result<Vec<u32>, KvmError> {
        if let Some(list) = self.saved_msrs.get() {
            return Ok(list.clone());
        }
        let listed = self
            .kvm
            .get_msr_index_list()
            .map_err(KvmError::ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        let list = vcpu.readable_msrs(listed.as_slice())?;
        Ok(self.saved_msrs.get_or_init(|| list).clone())
    }

    /// Raises (`true`) or lowers an interrupt line of the in-kernel
    /// irqchip (`create_pc_platform`).
    pub fn set_irq_line(&self, irq: u32, level: bool) -> Result<(), KvmError> {
        self.fd
            .set_irq_line(irq, level)
            .map_err(KvmError::ioctl("KVM_IRQ_LINE"))
    }

    /// Delivers an MSI message through the in-kernel irqchip
    /// (`KVM_SIGNAL_MSI`); false if no local APIC accepted it (an MSI the
    /// guest masked in its LAPIC, or no CPU matched the destination).
    pub fn signal_msi(&self, address: u64, data: u32) -> Result<bool, KvmError> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(|delivered| delivered > 0)
            .map_err(KvmError::ioctl("KVM_SIGNAL_MSI"))
    }

    /// The GSI routing table and irqfds (after `create_pc_platform`).
    pub fn irq_routes(&self) -> Arc<IrqRoutes> {
        Arc::clone(&self.routes)
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestRam {
        &self.memory
    }

    /// The memslot layout, which protects pages.
    pub fn memslots(&self) -> Arc<MemSlots> {
        Arc::clone(&self.slots)
    }

    /// Sends accesses to these MSRs to user space; everything else stays
    /// in KVM. The ranges must already respect KVM's limits (see
    /// `wasmvisor_exit::Routes::msr_filter`).
    pub fn set_msr_filter(&self, ranges: &[RangeInclusive<u32>]) -> Result<(), KvmError> {
        // A zero bit denies the access in the kernel, which with
        // KVM_MSR_EXIT_REASON_FILTER means: exit to user space.
        let bitmaps: Vec<Vec<u8>> = ranges
            .iter()
            .map(|r| vec![0u8; ((r.end() - r.start()) as usize + 1).div_ceil(8)])
            .collect();
        let filter: Vec<MsrFilterRange<'_>> = ranges
            .iter()
            .zip(&bitmaps)
            .map(|(r, bitmap)| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base: *r.start(),
                msr_count: r.end() - r.start() + 1,
                bitmap,
            })
            .collect();
        self.fd
            .set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
            .map_err(KvmError::ioctl("KVM_X86_SET_MSR_FILTER"))
    }

    /// The CPUID table KVM supports on this host, the base a CPUID policy
    /// edits.
    pub fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>, KvmError> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(cpuid.as_slice().iter().map(CpuidEntry::from).collect())
    }

    /// Creates vCPU `index`.
    pub fn create_vcpu(&self, index: u32) -> Result<Vcpu, KvmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd, index, self.sync_regs, self.caps))
    }
}

/// The in-kernel PIC and IOAPIC's input lines (after `create_pc_platform`).
impl wasmvisor_exit::InterruptLines for Vm {
    fn set_level(&self, line: u32, level: bool) -> Result<(), String> {
        self.set_irq_line(line, level).map_err(|e| e.to_string())
    }
}

/// `ram_size` bytes of private anonymous guest RAM at GPA 0.
fn anonymous_memory(ram_size: u64) -> Result<GuestRam, KvmError> {
    let size = usize::try_from(ram_size).map_err(|_| KvmError::Memory {
        size: ram_size,
        reason: "too large for this host".into(),
    })?;
    GuestRam::from_ranges(&[(GuestAddress(0), size)]).map_err(|e| KvmError::Memory {
        size: ram_size,
        reason: e.to_string(),
    })
}

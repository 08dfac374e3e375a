//! Boot-state setup: the CPUID table, the boot mode and entry point, and
//! the LAPIC LINT wiring.

use super::Vcpu;
use crate::boot::BootState;
use crate::cpuid::{to_kvm, CpuidEntry};
use crate::KvmError;

impl Vcpu {
    /// Sets the CPUID table. Must happen before the first run: KVM refuses
    /// changes afterwards.
    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), KvmError> {
        self.fd
            .set_cpuid2(&to_kvm(entries)?)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))
    }

    /// Puts the vCPU in the boot state's mode at its entry point.
    pub fn boot(&mut self, boot: &BootState) -> Result<(), KvmError> {
        let sregs = self
            .fd
            .get_sregs()
            .map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
        self.fd
            .set_sregs(&boot.sregs(sregs))
            .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&boot.regs(self.index))
            .map_err(KvmError::ioctl("KVM_SET_REGS"))
    }

    /// Wires the legacy PIC to LINT0 (ExtINT) and NMI to LINT1 of this
    /// vCPU's local APIC, as a PC does, so PIT interrupts reach the boot
    /// CPU before the kernel programs its IOAPIC.
    pub fn set_lapic_lints(&mut self) -> Result<(), KvmError> {
        const LVT_LINT0: usize = 0x350;
        const LVT_LINT1: usize = 0x360;
        const EXTINT: u32 = 0b111;
        const NMI: u32 = 0b100;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
        for (offset, mode) in [(LVT_LINT0, EXTINT), (LVT_LINT1, NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                lapic.regs[offset + i] = b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(KvmError::ioctl("KVM_SET_LAPIC"))
    }
}

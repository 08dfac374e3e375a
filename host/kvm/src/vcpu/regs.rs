//! The register cache (sync regs, or `KVM_GET_REGS`/`KVM_GET_SREGS` once
//! per exit) and the [`VcpuAccess`] implementation.

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::SyncReg;
use wasmvisor_exit::{
    DebugState, Exception, Reg, Segment, SegmentReg, VcpuAccess, VcpuAccessError,
};

use super::segments::{segment_from_kvm, segment_slot, segment_to_kvm};
use super::{access_err, Vcpu};
use crate::KvmError;

impl Vcpu {
    pub(super) fn rip(&mut self) -> Result<u64, KvmError> {
        if self.sync_regs {
            Ok(self.fd.sync_regs_mut().regs.rip)
        } else {
            Ok(self.general_regs()?.rip)
        }
    }

    fn general_regs(&mut self) -> Result<&mut kvm_regs, KvmError> {
        if self.regs.is_none() {
            self.regs = Some(
                self.fd
                    .get_regs()
                    .map_err(KvmError::ioctl("KVM_GET_REGS"))?,
            );
        }
        Ok(self.regs.as_mut().expect("filled above"))
    }

    fn system_regs(&mut self) -> Result<&mut kvm_sregs, VcpuAccessError> {
        if self.sregs.is_none() {
            self.sregs = Some(self.fd.get_sregs().map_err(access_err("KVM_GET_SREGS"))?);
        }
        Ok(self.sregs.as_mut().expect("filled above"))
    }

    /// Pushes register changes made during the last exit into KVM.
    pub(super) fn flush(&mut self) -> Result<(), KvmError> {
        if self.sregs_dirty {
            if let Some(s) = &self.sregs {
                self.fd
                    .set_sregs(s)
                    .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
            }
            self.sregs_dirty = false;
        }
        if self.regs_dirty {
            if let Some(r) = &self.regs {
                self.fd
                    .set_regs(r)
                    .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
            }
            self.regs_dirty = false;
        }
        Ok(())
    }

    fn gpr_slot(regs: &mut kvm_regs, reg: Reg) -> Option<&mut u64> {
        Some(match reg {
            Reg::Rax => &mut regs.rax,
            Reg::Rbx => &mut regs.rbx,
            Reg::Rcx => &mut regs.rcx,
            Reg::Rdx => &mut regs.rdx,
            Reg::Rsi => &mut regs.rsi,
            Reg::Rdi => &mut regs.rdi,
            Reg::Rsp => &mut regs.rsp,
            Reg::Rbp => &mut regs.rbp,
            Reg::R8 => &mut regs.r8,
            Reg::R9 => &mut regs.r9,
            Reg::R10 => &mut regs.r10,
            Reg::R11 => &mut regs.r11,
            Reg::R12 => &mut regs.r12,
            Reg::R13 => &mut regs.r13,
            Reg::R14 => &mut regs.r14,
            Reg::R15 => &mut regs.r15,
            Reg::Rip => &mut regs.rip,
            Reg::Rflags => &mut regs.rflags,
            Reg::Cr0 | Reg::Cr2 | Reg::Cr3 | Reg::Cr4 | Reg::Cr8 | Reg::Efer => return None,
        })
    }

    fn sreg_slot(sregs: &mut kvm_sregs, reg: Reg) -> &mut u64 {
        match reg {
            Reg::Cr0 => &mut sregs.cr0,
            Reg::Cr2 => &mut sregs.cr2,
            Reg::Cr3 => &mut sregs.cr3,
            Reg::Cr4 => &mut sregs.cr4,
            Reg::Cr8 => &mut sregs.cr8,
            _ => &mut sregs.efer,
        }
    }

    fn with_gpr<T>(
        &mut self,
        reg: Reg,
        f: impl FnOnce(&mut u64) -> T,
    ) -> Result<Option<T>, VcpuAccessError> {
        if self.sync_regs {
            let regs = &mut self.fd.sync_regs_mut().regs;
            Ok(Self::gpr_slot(regs, reg).map(f))
        } else {
            let regs = self.general_regs().map_err(|e| VcpuAccessError {
                op: "KVM_GET_REGS",
                reason: e.to_string(),
            })?;
            Ok(Self::gpr_slot(regs, reg).map(f))
        }
    }
}

impl VcpuAccess for Vcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn get_reg(&mut self, reg: Reg) -> Result<u64, VcpuAccessError> {
        if let Some(v) = self.with_gpr(reg, |slot| *slot)? {
            return Ok(v);
        }
        Ok(*Self::sreg_slot(self.system_regs()?, reg))
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), VcpuAccessError> {
        if self.with_gpr(reg, |slot| *slot = value)?.is_some() {
            if self.sync_regs {
                self.fd.set_sync_dirty_reg(SyncReg::Register);
            } else {
                self.regs_dirty = true;
            }
            return Ok(());
        }
        *Self::sreg_slot(self.system_regs()?, reg) = value;
        self.sregs_dirty = true;
        Ok(())
    }

    fn inject_exception(&mut self, e: Exception) -> Result<(), VcpuAccessError> {
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(access_err("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.nr = e.vector;
        events.exception.has_error_code = u8::from(e.error_code.is_some());
        events.exception.error_code = e.error_code.unwrap_or(0);
        self.fd
            .set_vcpu_events(&events)
            .map_err(access_err("KVM_SET_VCPU_EVENTS"))
    }

    fn host_rdmsr(&mut self, index: u32) -> Result<Option<u64>, VcpuAccessError> {
        self.read_msr(index)
    }

    fn get_segment(&mut self, s: SegmentReg) -> Result<Segment, VcpuAccessError> {
        Ok(segment_from_kvm(segment_slot(self.system_regs()?, s)))
    }

    fn set_segment(&mut self, s: SegmentReg, v: Segment) -> Result<(), VcpuAccessError> {
        *segment_slot(self.system_regs()?, s) = segment_to_kvm(&v);
        self.sregs_dirty = true;
        Ok(())
    }

    fn debug_state(&self) -> DebugState {
        self.debug
    }

    fn set_debug_state(&mut self, d: DebugState) -> Result<(), VcpuAccessError> {
        self.write_guest_debug(d)
    }

    fn host_wrmsr(&mut self, index: u32, value: u64) -> Result<bool, VcpuAccessError> {
        self.write_msr(index, value)
    }
}

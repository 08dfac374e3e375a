//! A vCPU's whole architectural state, for snapshots and resets: taken
//! after the exit in flight is complete, put back before the next run.
//!
//! KVM only finishes an exit (the data of an IN, an MMIO read, RDMSR,
//! the RIP advance of an OUT) on the next `KVM_RUN`. [`Vcpu::settle`] runs
//! it with `immediate_exit` set, which completes the exit and returns
//! before the guest executes anything, so the state read afterwards is the
//! state the guest resumes from: a snapshot taken at an OUT restores after
//! the OUT, never at it (which would repeat it).

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};

use super::{Pending, Vcpu};
use crate::sections::{fpu_from_bytes, fpu_to_bytes, pod, Sections, SectionsError};
use crate::KvmError;

/// Everything KVM holds for one vCPU that a restore must put back.
#[derive(Clone)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: kvm_fpu,
    /// The legacy 4 KiB XSAVE area (`kvm_xsave.region`); `None` where
    /// KVM lacks `KVM_CAP_XSAVE`.
    pub xsave: Option<Box<[u32; 1024]>>,
    /// `None` where KVM lacks `KVM_CAP_XCRS`.
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    pub events: kvm_vcpu_events,
    /// `None` without the in-kernel local APIC.
    pub lapic: Option<kvm_lapic_state>,
    pub mp_state: kvm_mp_state,
    /// MSRs by index, in the order of the VM's saved-MSR list.
    pub msrs: Vec<kvm_msr_entry>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("cr3", &format_args!("{:#x}", self.sregs.cr3))
            .field("msrs", &self.msrs.len())
            .field("lapic", &self.lapic.is_some())
            .finish_non_exhaustive()
    }
}

/// Section names in a vCPU state file (`docs/snapshots.md`).
const REGS: &str = "regs";
const SREGS: &str = "sregs";
const FPU: &str = "fpu";
const XSAVE: &str = "xsave";
const XCRS: &str = "xcrs";
const DEBUGREGS: &str = "debugregs";
const EVENTS: &str = "events";
const LAPIC: &str = "lapic";
const MP_STATE: &str = "mp_state";
const MSRS: &str = "msrs";

impl VcpuState {
    /// The state as sections: each KVM structure in its x86-64 UAPI
    /// layout, MSRs as (index u32, reserved u32, value u64) entries.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = Sections::new();
        s.put(REGS, pod(&self.regs));
        s.put(SREGS, pod(&self.sregs));
        s.put(FPU, &fpu_to_bytes(&self.fpu));
        if let Some(x) = &self.xsave {
            s.put(XSAVE, pod(&**x));
        }
        if let Some(x) = &self.xcrs {
            s.put(XCRS, pod(x));
        }
        s.put(DEBUGREGS, pod(&self.debugregs));
        s.put(EVENTS, pod(&self.events));
        if let Some(l) = &self.lapic {
            s.put(LAPIC, pod(l));
        }
        s.put(MP_STATE, pod(&self.mp_state));
        let msrs: Vec<u8> = self.msrs.iter().flat_map(|m| pod(m).to_vec()).collect();
        s.put(MSRS, &msrs);
        s.encode()
    }

    /// Reads what [`VcpuState::encode`] wrote; every section is checked
    /// for its exact size.
    pub fn decode(bytes: &[u8]) -> Result<VcpuState, SectionsError> {
        let s = Sections::decode(bytes)?;
        let xsave = match s.get_opt(XSAVE) {
            Some(b) => Some(Box::new(crate::sections::from_pod(XSAVE, b)?)),
            None => None,
        };
        let msr_bytes = s.get(MSRS)?;
        let entry = std::mem::size_of::<kvm_msr_entry>();
        if !msr_bytes.len().is_multiple_of(entry) {
            return Err(SectionsError::Size {
                section: MSRS.into(),
                want: entry,
                got: msr_bytes.len(),
            });
        }
        let msrs = msr_bytes
            .chunks(entry)
            .map(|c| crate::sections::from_pod(MSRS, c))
            .collect::<Result<_, _>>()?;
        Ok(VcpuState {
            regs: s.pod(REGS)?,
            sregs: s.pod(SREGS)?,
            fpu: fpu_from_bytes(s.get(FPU)?)?,
            xsave,
            xcrs: s
                .get_opt(XCRS)
                .map(|b| crate::sections::from_pod(XCRS, b))
                .transpose()?,
            debugregs: s.pod(DEBUGREGS)?,
            events: s.pod(EVENTS)?,
            lapic: s
                .get_opt(LAPIC)
                .map(|b| crate::sections::from_pod(LAPIC, b))
                .transpose()?,
            mp_state: s.pod(MP_STATE)?,
            msrs,
        })
    }
}

impl Vcpu {
    /// Writes `saved`. KVM stops at an MSR it refuses (a paravirtual MSR
    /// whose CPUID bit this VM does not expose, say); such an MSR is
    /// skipped when it already holds the saved value (or, unreadable, the
    /// saved value is 0), and is an error otherwise.
    fn restore_msrs(&mut self, saved: &[kvm_msr_entry]) -> Result<(), KvmError> {
        let mut rest = saved;
        while !rest.is_empty() {
            let msrs = Msrs::from_entries(rest)
                .map_err(|e| KvmError::BadBootState(format!("too many MSRs to restore: {e:?}")))?;
            let written = self
                .fd
                .set_msrs(&msrs)
                .map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
            let Some(refused) = rest.get(written) else {
                break;
            };
            let now = self.read_msr(refused.index).ok().flatten();
            if now.unwrap_or(0) != refused.data {
                return Err(KvmError::BadBootState(format!(
                    "KVM refused MSR {:#x} = {:#x} (it holds {})",
                    refused.index,
                    refused.data,
                    now.map_or("nothing readable".into(), |v| format!("{v:#x}"))
                )));
            }
            rest = &rest[written + 1..];
        }
        Ok(())
    }

    /// Completes the exit in flight without running the guest: a
    /// `KVM_RUN` with `immediate_exit` set (see the module docs).
    pub fn settle(&mut self) -> Result<(), KvmError> {
        self.flush()?;
        self.fd.set_kvm_immediate_exit(1);
        let result = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        self.pending = Pending::None;
        self.regs = None;
        self.sregs = None;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(source) => Err(KvmError::Ioctl {
                op: "KVM_RUN(immediate_exit)",
                source,
            }),
        }
    }

    /// Reads the whole state; call [`Vcpu::settle`] first when an exit
    /// may be in flight. `msr_indices` is the VM's saved-MSR list
    /// ([`crate::Vm::saved_msrs`]); `lapic` is whether the VM has the
    /// in-kernel irqchip.
    pub fn save_state(&mut self, msr_indices: &[u32], lapic: bool) -> Result<VcpuState, KvmError> {
        let fd = &self.fd;
        let xsave = if self.caps.xsave {
            Some(Box::new(
                fd.get_xsave()
                    .map_err(KvmError::ioctl("KVM_GET_XSAVE"))?
                    .region,
            ))
        } else {
            None
        };
        let xcrs = if self.caps.xcrs {
            Some(fd.get_xcrs().map_err(KvmError::ioctl("KVM_GET_XCRS"))?)
        } else {
            None
        };
        let lapic = if lapic {
            Some(fd.get_lapic().map_err(KvmError::ioctl("KVM_GET_LAPIC"))?)
        } else {
            None
        };
        let mut msrs = Msrs::from_entries(
            &msr_indices
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|e| KvmError::BadBootState(format!("too many MSRs to save: {e:?}")))?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(KvmError::ioctl("KVM_GET_MSRS"))?;
        if read != msr_indices.len() {
            return Err(KvmError::BadBootState(format!(
                "KVM read {read} of the {} MSRs to save; MSR {:#x} failed",
                msr_indices.len(),
                msr_indices.get(read).copied().unwrap_or_default()
            )));
        }
        Ok(VcpuState {
            regs: fd.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?,
            fpu: fd.get_fpu().map_err(KvmError::ioctl("KVM_GET_FPU"))?,
            xsave,
            xcrs,
            debugregs: fd
                .get_debug_regs()
                .map_err(KvmError::ioctl("KVM_GET_DEBUGREGS"))?,
            events: fd
                .get_vcpu_events()
                .map_err(KvmError::ioctl("KVM_GET_VCPU_EVENTS"))?,
            lapic,
            mp_state: fd
                .get_mp_state()
                .map_err(KvmError::ioctl("KVM_GET_MP_STATE"))?,
            msrs: msrs.as_slice().to_vec(),
        })
    }

    /// Puts `state` back, in the order KVM needs: MP state and registers
    /// first, the LAPIC before the MSRs that depend on it (TSC deadline),
    /// and the pending events last.
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), KvmError> {
        self.pending = Pending::None;
        self.regs = None;
        self.sregs = None;
        self.regs_dirty = false;
        self.sregs_dirty = false;
        let fd = &self.fd;
        fd.set_mp_state(state.mp_state)
            .map_err(KvmError::ioctl("KVM_SET_MP_STATE"))?;
        fd.set_sregs(&state.sregs)
            .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
        fd.set_regs(&state.regs)
            .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
        fd.set_fpu(&state.fpu)
            .map_err(KvmError::ioctl("KVM_SET_FPU"))?;
        if let Some(region) = &state.xsave {
            let x = &kvm_xsave {
                region: **region,
                ..Default::default()
            };
            // SAFETY: `x` is a whole `kvm_xsave` of the legacy 4 KiB size
            // KVM_GET_XSAVE produced; KVM reads only that many bytes
            // because this VM never enabled KVM_CAP_XSAVE2's larger area.
            unsafe { fd.set_xsave(x) }.map_err(KvmError::ioctl("KVM_SET_XSAVE"))?;
        }
        if let Some(x) = &state.xcrs {
            fd.set_xcrs(x).map_err(KvmError::ioctl("KVM_SET_XCRS"))?;
        }
        fd.set_debug_regs(&state.debugregs)
            .map_err(KvmError::ioctl("KVM_SET_DEBUGREGS"))?;
        if let Some(l) = &state.lapic {
            fd.set_lapic(l).map_err(KvmError::ioctl("KVM_SET_LAPIC"))?;
        }
        self.restore_msrs(&state.msrs)?;
        let fd = &self.fd;
        fd.set_vcpu_events(&state.events)
            .map_err(KvmError::ioctl("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

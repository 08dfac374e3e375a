//! Host-side MSR access through `KVM_GET_MSRS`/`KVM_SET_MSRS`.

use kvm_bindings::{kvm_msr_entry, Msrs};
use wasmvisor_exit::VcpuAccessError;

use super::{access_err, Vcpu};

impl Vcpu {
    /// [`VcpuAccess::host_rdmsr`](wasmvisor_exit::VcpuAccess::host_rdmsr):
    /// the MSR's value, or `None` when KVM does not know it.
    pub(crate) fn read_msr(&mut self, index: u32) -> Result<Option<u64>, VcpuAccessError> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| VcpuAccessError {
            op: "KVM_GET_MSRS",
            reason: format!("{e:?}"),
        })?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(access_err("KVM_GET_MSRS"))?;
        Ok((read == 1).then(|| msrs.as_slice()[0].data))
    }

    /// [`VcpuAccess::host_wrmsr`](wasmvisor_exit::VcpuAccess::host_wrmsr):
    /// whether KVM took the write.
    pub(super) fn write_msr(&mut self, index: u32, value: u64) -> Result<bool, VcpuAccessError> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        }])
        .map_err(|e| VcpuAccessError {
            op: "KVM_SET_MSRS",
            reason: format!("{e:?}"),
        })?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(access_err("KVM_SET_MSRS"))?;
        Ok(written == 1)
    }
}

impl Vcpu {
    /// The MSRs of `listed` this vCPU can read: `KVM_GET_MSRS` stops at
    /// the first one it cannot, which is dropped before trying the rest.
    pub(crate) fn readable_msrs(&self, listed: &[u32]) -> Result<Vec<u32>, crate::KvmError> {
        let mut readable = Vec::with_capacity(listed.len());
        let mut rest = listed;
        while !rest.is_empty() {
            let entries: Vec<kvm_msr_entry> = rest
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries)
                .map_err(|e| crate::KvmError::BadBootState(format!("too many MSRs: {e:?}")))?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(crate::KvmError::ioctl("KVM_GET_MSRS"))?;
            readable.extend_from_slice(&rest[..read]);
            rest = rest.get(read + 1..).unwrap_or_default();
        }
        Ok(readable)
    }
}

//! The CPUID table of a VM: KVM's supported table with the policies'
//! edits, fixed once the vCPUs first run.

use wasmvisor_exit::Subscriptions;
use wasmvisor_kvm::CpuidEntry;
use wasmvisor_policy::{CpuidLeaf, PolicyInstance};

use crate::error::VmmError;
use crate::vcpu::LentVcpu;

/// The entries of `table` for leaf `function`, or one all-zero entry if
/// the table has none (a leaf only a policy defines).
pub(crate) fn entries_of(table: &[CpuidEntry], function: u32) -> Vec<CpuidEntry> {
    let found: Vec<CpuidEntry> = table
        .iter()
        .filter(|e| e.function == function)
        .copied()
        .collect();
    if !found.is_empty() {
        return found;
    }
    vec![CpuidEntry {
        function,
        index: 0,
        indexed: false,
        eax: 0,
        ebx: 0,
        ecx: 0,
        edx: 0,
    }]
}

/// Asks a policy for its version of one entry.
pub(crate) fn ask(
    inst: &mut PolicyInstance<LentVcpu>,
    entry: &CpuidEntry,
) -> Result<CpuidEntry, String> {
    let out = inst
        .cpuid(CpuidLeaf {
            function: entry.function,
            index: entry.index,
            eax: entry.eax,
            ebx: entry.ebx,
            ecx: entry.ecx,
            edx: entry.edx,
        })
        .map_err(|e| e.to_string())?;
    if (out.function, out.index) != (entry.function, entry.index) {
        return Err(format!(
            "cpuid answered leaf {:#x}.{} with leaf {:#x}.{}",
            entry.function, entry.index, out.function, out.index
        ));
    }
    Ok(CpuidEntry {
        eax: out.eax,
        ebx: out.ebx,
        ecx: out.ecx,
        edx: out.edx,
        ..*entry
    })
}

/// The CPUID table every vCPU starts from, with the policies' edits
/// applied in load order (a later policy sees the earlier ones' result).
pub(crate) fn cpuid_table(
    base: &[CpuidEntry],
    instances: &mut [&mut PolicyInstance<LentVcpu>],
    subs: &[Subscriptions],
    names: &[String],
) -> Result<Vec<CpuidEntry>, VmmError> {
    let mut table = base.to_vec();
    for ((inst, sub), name) in instances.iter_mut().zip(subs).zip(names) {
        for &function in &sub.cpuid {
            let mut edited = Vec::new();
            for entry in entries_of(&table, function) {
                edited.push(ask(inst, &entry).map_err(|reason| VmmError::Policy {
                    policy: name.clone(),
                    reason,
                })?);
            }
            table.retain(|e| e.function != function);
            table.extend(edited);
        }
    }
    Ok(table)
}

/// Gives each vCPU its own APIC ID in CPUID, as real hardware does.
pub(crate) fn per_vcpu_cpuid(table: &[CpuidEntry], index: u32) -> Vec<CpuidEntry> {
    let mut t = table.to_vec();
    for e in &mut t {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24),
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
    t
}

//! `wasmvisor run --restore DIR`: a snapshot read, checked against this
//! host and turned into the configuration and state a new VM starts from.

use std::path::{Path, PathBuf};

use wasmvisor_exit::GuestRam;
use wasmvisor_kvm::{CpuidEntry, VcpuState, VmState};

use super::format::{CpuidRecord, Snapshot, SnapshotError};
use crate::config::{GuestSpec, PolicySpec, SerialBackend, VmConfig};

/// A snapshot whose files all decoded, ready to build a VM from.
pub struct Restore {
    pub snapshot: Snapshot,
    pub vcpus: Vec<(usize, Box<VcpuState>)>,
    pub vm: VmState,
    /// The bytes of `memory.bin` (checked; written into RAM at build).
    pub memory: Vec<u8>,
    pub devices: Vec<(String, Vec<u8>)>,
    /// Per policy, in chain order: its `save-state` per vCPU index.
    pub policy_states: Vec<Vec<(usize, Vec<u8>)>>,
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restore")
            .field("dir", &self.snapshot.dir)
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl Restore {
    /// Reads and checks every file of the snapshot in `dir`.
    pub fn load(dir: &Path) -> Result<Restore, SnapshotError> {
        let snapshot = Snapshot::open(dir)?;
        let damaged = |reason: String| SnapshotError::Damaged {
            dir: dir.display().to_string(),
            reason,
        };
        let m = &snapshot.manifest;
        let mut vcpus = Vec::new();
        for (index, file) in &m.vcpus {
            let state = VcpuState::decode(&snapshot.read(file)?)
                .map_err(|e| damaged(format!("{file}: {e}")))?;
            vcpus.push((*index as usize, Box::new(state)));
        }
        let present: Vec<usize> = vcpus.iter().map(|(i, _)| *i).collect();
        if present != (0..m.vm.vcpus as usize).collect::<Vec<_>>() {
            return Err(SnapshotError::Refused(format!(
                "the snapshot holds vCPUs {present:?} of {}; a VM whose vCPUs had ended cannot be restored",
                m.vm.vcpus
            )));
        }
        let vm = VmState::decode(&snapshot.read(&m.vm_state)?)
            .map_err(|e| damaged(format!("{}: {e}", m.vm_state)))?;
        if vm.irqchips.is_empty() == m.vm.irqchip {
            return Err(damaged(
                "the VM state and the manifest disagree on the irqchip".into(),
            ));
        }
        let memory = snapshot.read(&m.memory)?;
        let mut devices = Vec::new();
        for (name, file) in &m.devices {
            devices.push((name.clone(), snapshot.read(file)?));
        }
        let mut policy_states = Vec::new();
        for p in &m.policies {
            let mut states = Vec::new();
            for (vcpu, file) in &p.states {
                states.push((*vcpu as usize, snapshot.read(file)?));
            }
            policy_states.push(states);
        }
        Ok(Restore {
            snapshot,
            vcpus,
            vm,
            memory,
            devices,
            policy_states,
        })
    }

    /// The CPUID table the vCPUs were given.
    pub fn cpuid(&self) -> Vec<CpuidEntry> {
        self.snapshot
            .manifest
            .cpuid
            .iter()
            .map(|c| CpuidEntry {
                function: c.function,
                index: c.index,
                indexed: c.indexed,
                eax: c.eax,
                ebx: c.ebx,
                ecx: c.ecx,
                edx: c.edx,
            })
            .collect()
    }

    /// The configuration of the VM the snapshot was taken of; run options
    /// (events, control socket, recording, cache) are the caller's.
    pub fn config(&self) -> Result<VmConfig, SnapshotError> {
        let m = &self.snapshot.manifest;
        let bad = |reason: String| SnapshotError::Damaged {
            dir: self.snapshot.dir.display().to_string(),
            reason,
        };
        let mut config = VmConfig::new(GuestSpec {
            path: self.snapshot.dir.clone(),
            mode: None,
            load_addr: None,
            entry: None,
        });
        config.mem_bytes = m.vm.mem_bytes;
        config.vcpus = m.vm.vcpus;
        config.irqchip = m.vm.irqchip;
        config.serial = SerialBackend::parse(&m.vm.serial)
            .ok_or_else(|| bad(format!("unknown serial backend `{}`", m.vm.serial)))?;
        config.debug_exit = m.vm.debug_exit;
        config.kernel_profile = m.vm.kernel_profile.as_ref().map(PathBuf::from);
        for p in &m.policies {
            let mut spec = PolicySpec {
                path: PathBuf::from(&p.path),
                config: p.config.clone(),
                sandbox: Default::default(),
            };
            for (k, v) in &p.sandbox {
                spec.sandbox
                    .set(k, v)
                    .map_err(|e| bad(format!("policy {}: {e}", p.name)))?;
            }
            config.policies.push(spec);
        }
        Ok(config)
    }

    /// Refuses a host whose KVM cannot give the guest the CPU it had: a
    /// different vendor, or a feature bit the snapshot's table sets that
    /// this host's supported table lacks.
    pub fn check_host(&self, supported: &[CpuidEntry]) -> Result<(), SnapshotError> {
        let refuse = |reason: String| SnapshotError::Host {
            dir: self.snapshot.dir.display().to_string(),
            reason,
        };
        let find = |table: &[CpuidEntry], function: u32, index: u32| {
            table
                .iter()
                .find(|e| e.function == function && (!e.indexed || e.index == index))
                .copied()
        };
        let saved = self.cpuid();
        let vendor = |e: Option<CpuidEntry>| e.map(|e| (e.ebx, e.edx, e.ecx));
        if vendor(find(&saved, 0, 0)) != vendor(find(supported, 0, 0)) {
            return Err(refuse("it was taken on a CPU of another vendor".into()));
        }
        for (function, index, registers) in FEATURE_LEAVES {
            let (Some(want), have) = (
                find(&saved, function, index),
                find(supported, function, index),
            ) else {
                continue;
            };
            let have = have.unwrap_or(CpuidEntry {
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
                ..want
            });
            for &(name, get) in registers {
                let missing = get(&want) & !get(&have);
                if missing != 0 {
                    return Err(refuse(format!(
                        "the guest's CPUID leaf {function:#x}.{index} {name} has bits {missing:#x} this host's KVM does not offer"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes the snapshot's RAM into `ram` (fresh, all zero).
    pub fn fill_ram(&self, ram: &GuestRam) -> Result<(), SnapshotError> {
        super::memory::read_sparse(&self.memory, ram, self.snapshot.manifest.vm.mem_bytes).map_err(
            |reason| SnapshotError::Damaged {
                dir: self.snapshot.dir.display().to_string(),
                reason,
            },
        )
    }
}

type Register = (&'static str, fn(&CpuidEntry) -> u32);

/// The leaves whose bits are CPU features a guest may have started to
/// use: the basic and extended feature flags and leaf 7's.
const FEATURE_LEAVES: [(u32, u32, &[Register]); 3] = [
    (1, 0, &[("ecx", |e| e.ecx), ("edx", |e| e.edx)]),
    (
        7,
        0,
        &[("ebx", |e| e.ebx), ("ecx", |e| e.ecx), ("edx", |e| e.edx)],
    ),
    (0x8000_0001, 0, &[("ecx", |e| e.ecx), ("edx", |e| e.edx)]),
];

/// The manifest's form of a CPUID entry (what a snapshot records).
impl From<CpuidEntry> for CpuidRecord {
    fn from(e: CpuidEntry) -> CpuidRecord {
        CpuidRecord {
            function: e.function,
            index: e.index,
            indexed: e.indexed,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

/// `wasmvisor vm dump --from DIR CORE`: the core of a snapshot, without a
/// VM.
pub fn dump_snapshot(dir: &Path, core: &Path) -> Result<super::dump::DumpReport, String> {
    let restore = Restore::load(dir).map_err(|e| e.to_string())?;
    let mem = restore.snapshot.manifest.vm.mem_bytes;
    let size = usize::try_from(mem).map_err(|_| "the snapshot's RAM is too large for this host")?;
    let ram = GuestRam::from_ranges(&[(vm_memory::GuestAddress(0), size)])
        .map_err(|e| format!("cannot allocate {mem} bytes: {e}"))?;
    restore.fill_ram(&ram).map_err(|e| e.to_string())?;
    let kernel = restore
        .snapshot
        .manifest
        .vm
        .kernel_profile
        .as_ref()
        .map(|p| wasmvisor_policy::KernelProfile::from_image(Path::new(p)));
    super::dump::to_file(core, &ram, mem, &restore.vcpus, kernel.as_ref())
}

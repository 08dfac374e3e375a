//! Building a VM from a [`VmConfig`] and running it to the end.
//!
//! Order matters: policies are loaded and initialised before the vCPUs
//! first run, because their subscriptions decide the MSR filter and their
//! CPUID answers must be in the table before KVM freezes it.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use wasmvisor_exit::{GpaRange, MemoryProtector, Routes, Subscriptions};
use wasmvisor_kvm::{install_kick_handler, BootMode, BootState, CpuidEntry, Kicker, Vcpu, Vm};
use wasmvisor_policy::{
    ConsoleSink, CpuidLeaf, InstanceContext, PolicyEngine, PolicyImage, PolicyInstance, Shared,
};

use crate::config::{SerialBackend, VmConfig};
use crate::error::VmmError;
use crate::loader::{is_elf, load_elf, load_flat};
use crate::native::NativeHandler;
use crate::outcome::VmOutcome;
use crate::serial::{NativeSerial, COM1};
use crate::signals;
use crate::stats::Stats;
use crate::vcpu_loop::{Control, PolicyHealth, VcpuEnd, VcpuPolicy, VcpuWorker, VmHandles};

/// Default load address for flat binaries: just above the host-reserved
/// low memory.
pub const DEFAULT_LOAD_ADDR: u64 = wasmvisor_kvm::HOST_RESERVED_END;

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: VmOutcome,
    pub stats: Stats,
}

/// Largest guest image file wasmvisor reads.
const MAX_IMAGE_BYTES: u64 = 1 << 30;

fn read_file(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, VmmError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| VmmError::Read {
        what,
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if meta.len() > limit {
        return Err(VmmError::Read {
            what,
            path: shown,
            reason: format!(
                "file is {} bytes, more than the {limit}-byte limit",
                meta.len()
            ),
        });
    }
    std::fs::read(path).map_err(|e| VmmError::Read {
        what,
        path: shown,
        reason: e.to_string(),
    })
}

/// The CPUID table every vCPU starts from, with the policies' edits
/// applied in load order (a later policy sees the earlier ones' result).
fn cpuid_table(
    base: &[CpuidEntry],
    instances: &mut [PolicyInstance<Vcpu>],
    subs: &[Subscriptions],
    names: &[String],
) -> Result<Vec<CpuidEntry>, VmmError> {
    let mut table = base.to_vec();
    for ((inst, sub), name) in instances.iter_mut().zip(subs).zip(names) {
        for &function in &sub.cpuid {
            if !table.iter().any(|e| e.function == function) {
                table.push(CpuidEntry {
                    function,
                    index: 0,
                    indexed: false,
                    eax: 0,
                    ebx: 0,
                    ecx: 0,
                    edx: 0,
                });
            }
            for entry in table.iter_mut().filter(|e| e.function == function) {
                let out = inst
                    .cpuid(CpuidLeaf {
                        function: entry.function,
                        index: entry.index,
                        eax: entry.eax,
                        ebx: entry.ebx,
                        ecx: entry.ecx,
                        edx: entry.edx,
                    })
                    .map_err(|e| VmmError::Policy {
                        policy: name.clone(),
                        reason: e.to_string(),
                    })?;
                if (out.function, out.index) != (entry.function, entry.index) {
                    return Err(VmmError::Policy {
                        policy: name.clone(),
                        reason: format!(
                            "cpuid answered leaf {:#x}.{} with leaf {:#x}.{}",
                            entry.function, entry.index, out.function, out.index
                        ),
                    });
                }
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (out.eax, out.ebx, out.ecx, out.edx);
            }
        }
    }
    Ok(table)
}

/// Gives each vCPU its own APIC ID in CPUID, as real hardware does.
fn per_vcpu_cpuid(table: &[CpuidEntry], index: u32) -> Vec<CpuidEntry> {
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

/// Display names: the file stem, with `#2`, `#3`... for a file loaded
/// more than once (with different configs).
fn policy_names(config: &VmConfig) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in &config.policies {
        let stem = p
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.path.display().to_string());
        let seen = names
            .iter()
            .filter(|n| n.split('#').next() == Some(stem.as_str()))
            .count();
        names.push(if seen == 0 {
            stem
        } else {
            format!("{stem}#{}", seen + 1)
        });
    }
    names
}

/// Builds the VM described by `config` and runs it until it ends.
pub fn run(config: &VmConfig, console: Arc<dyn ConsoleSink>) -> Result<RunReport, VmmError> {
    run_with_native(config, console, None)
}

/// [`run`], with a native handler that sees every exit before the
/// policies (benchmarks).
pub fn run_with_native(
    config: &VmConfig,
    console: Arc<dyn ConsoleSink>,
    native: Option<Arc<dyn NativeHandler>>,
) -> Result<RunReport, VmmError> {
    config.check()?;
    let engine = PolicyEngine::new().map_err(|e| VmmError::Engine(e.to_string()))?;
    let images = config
        .policies
        .iter()
        .map(|p| PolicyImage::load_with(&engine, &p.path, p.sandbox.wasi).map_err(VmmError::from))
        .collect::<Result<Vec<_>, _>>()?;
    let names = policy_names(config);

    let image = read_file(&config.guest.path, "guest image", MAX_IMAGE_BYTES)?;
    let vm = Vm::new(config.mem_bytes)?;
    let elf = is_elf(&image);
    let loaded = if elf {
        if config.guest.load_addr.is_some() {
            return Err(VmmError::Usage(
                "--load-addr applies to flat binaries; an ELF image loads at its own addresses"
                    .into(),
            ));
        }
        load_elf(vm.memory(), &image)
    } else {
        load_flat(
            vm.memory(),
            &image,
            config.guest.load_addr.unwrap_or(DEFAULT_LOAD_ADDR),
        )
    }
    .map_err(|e| VmmError::Guest {
        path: config.guest.path.display().to_string(),
        reason: e.to_string(),
    })?;
    let boot = BootState {
        mode: config
            .guest
            .mode
            .unwrap_or(if elf { BootMode::Long } else { BootMode::Real }),
        entry: config.guest.entry.unwrap_or(loaded.entry),
        vcpu_count: config.vcpus,
    };
    boot.check()?;
    boot.write_tables(vm.memory())?;

    let memslots = vm.memslots();
    let protector: Arc<dyn MemoryProtector> = memslots.clone();
    let shared = Arc::new(
        Shared::new(Arc::clone(&console), config.events.as_deref())
            .map_err(|e| VmmError::Engine(e.to_string()))?
            .with_protector(Arc::clone(&protector)),
    );
    // Instantiate and initialise every policy on every vCPU.
    let mut per_vcpu: Vec<(Vcpu, Vec<PolicyInstance<Vcpu>>)> = Vec::new();
    let mut subs: Vec<Subscriptions> = Vec::new();
    for index in 0..config.vcpus {
        let vcpu = vm.create_vcpu(index)?;
        let mut instances = Vec::new();
        for (p, (image, spec)) in images.iter().zip(&config.policies).enumerate() {
            let ctx = InstanceContext {
                policy_index: p,
                policy_name: names[p].clone(),
                vcpu_index: index,
                vcpu_count: config.vcpus,
                memory: vm.memory().clone(),
                grants: spec.sandbox.grants,
                shared: Arc::clone(&shared),
            };
            let mut inst = image.instantiate::<Vcpu>(ctx, &spec.sandbox.limits)?;
            let sub = inst.init(&spec.config)?;
            if index == 0 {
                if let Some(reason) = sub.unsupported().into_iter().next() {
                    return Err(VmmError::Policy {
                        policy: names[p].clone(),
                        reason,
                    });
                }
                if let Some(cap) = spec.sandbox.missing_grant(sub.capabilities) {
                    return Err(VmmError::Policy {
                        policy: names[p].clone(),
                        reason: format!(
                            "asks for the {cap} capability, which was not granted (grant it with @grant={cap})"
                        ),
                    });
                }
                if !sub.protect.is_empty() && !spec.sandbox.grants.protect_memory {
                    return Err(VmmError::Policy {
                        policy: names[p].clone(),
                        reason: "protects memory at init without the protect-memory capability (grant it with @grant=protect-memory)".into(),
                    });
                }
                for req in &sub.protect {
                    protector
                        .protect(req.range, req.mode)
                        .map_err(|e| VmmError::Policy {
                            policy: names[p].clone(),
                            reason: format!(
                                "cannot protect {:#x}+{:#x}: {e}",
                                req.range.base, req.range.len
                            ),
                        })?;
                }
                subs.push(sub);
            } else if sub != subs[p] {
                return Err(VmmError::Policy {
                    policy: names[p].clone(),
                    reason: format!(
                        "init on vcpu {index} returned different subscriptions than on vcpu 0"
                    ),
                });
            }
            instances.push(inst);
        }
        per_vcpu.push((vcpu, instances));
    }

    let builtins = match config.serial {
        SerialBackend::Native => vec![NativeSerial::new(Arc::clone(&console))],
        SerialBackend::Policy => Vec::new(),
    };
    let builtin_claims: Vec<(Vec<std::ops::RangeInclusive<u16>>, Vec<GpaRange>)> = builtins
        .iter()
        .map(|_| (vec![COM1..=COM1 + 7], Vec::new()))
        .collect();
    let sub_refs: Vec<&Subscriptions> = subs.iter().collect();
    let routes = Arc::new(
        Routes::build(&sub_refs, &builtin_claims).map_err(|e| VmmError::Routes(e.to_string()))?,
    );
    if !routes.msr_filter().is_empty() {
        vm.set_msr_filter(routes.msr_filter())?;
    }

    let health: Vec<Arc<PolicyHealth>> = config
        .policies
        .iter()
        .map(|p| Arc::new(PolicyHealth::new(p.sandbox.quarantine_after)))
        .collect();
    let base_cpuid = vm.supported_cpuid()?;
    let control = Arc::new(Control::default());
    let handles = VmHandles {
        routes: Arc::clone(&routes),
        builtins: builtins.clone(),
        native,
        memory: vm.memory().clone(),
        protector: Arc::clone(&protector),
        shared: Arc::clone(&shared),
        control: Arc::clone(&control),
    };
    let mut workers = Vec::new();
    for (mut vcpu, mut instances) in per_vcpu {
        let table = cpuid_table(&base_cpuid, &mut instances, &subs, &names)?;
        vcpu.set_cpuid(&per_vcpu_cpuid(&table, vcpu.index()))?;
        vcpu.boot(&boot)?;
        let policies = instances
            .into_iter()
            .zip(&names)
            .zip(&config.policies)
            .zip(&health)
            .map(|(((instance, name), spec), health)| VcpuPolicy {
                name: name.clone(),
                instance,
                grants: spec.sandbox.grants,
                on_fault: spec.sandbox.on_fault,
                health: Arc::clone(health),
            })
            .collect();
        workers.push(VcpuWorker::new(vcpu, policies, handles.clone()));
    }
    let outcome = run_workers(workers, &control, &names)?;
    drop(vm);
    Ok(outcome)
}

/// Starts one thread per vCPU and waits for the VM to end.
fn run_workers(
    workers: Vec<VcpuWorker>,
    control: &Arc<Control>,
    names: &[String],
) -> Result<RunReport, VmmError> {
    install_kick_handler()?;
    signals::install()
        .map_err(|e| VmmError::Engine(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx) = mpsc::channel::<(VcpuEnd, Stats)>();
    let started = Instant::now();
    let mut handles = Vec::new();
    for (i, worker) in workers.into_iter().enumerate() {
        let tx = tx.clone();
        let handle = thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                let result = worker.run();
                let _ = tx.send(result);
            })
            .map_err(|e| VmmError::Engine(format!("cannot start a vCPU thread: {e}")))?;
        handles.push(handle);
    }
    drop(tx);
    let mut remaining = handles.len();
    let mut stats = Stats::new(names);
    let mut outcome: Option<VmOutcome> = None;
    let stop_all = |handles: &[thread::JoinHandle<()>]| {
        control
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        for h in handles {
            Kicker::kick(h);
        }
    };
    while remaining > 0 {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((VcpuEnd::Done(end), vcpu_stats)) => {
                remaining -= 1;
                stats.merge(&vcpu_stats);
                // A vCPU that halted leaves the others running; any other
                // ending stops the whole VM.
                if end != VmOutcome::Halted {
                    stop_all(&handles);
                }
                let worse = outcome
                    .as_ref()
                    .is_none_or(|o| end.severity() > o.severity());
                if worse {
                    outcome = Some(end);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(sig) = signals::received() {
                    if !matches!(outcome, Some(VmOutcome::Signal(_))) {
                        outcome = Some(VmOutcome::Signal(sig));
                        stop_all(&handles);
                    } else {
                        // Keep kicking: a vCPU may have re-entered KVM_RUN
                        // between the flag check and the first kick.
                        stop_all(&handles);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for h in handles {
        let _ = h.join();
    }
    stats.wall = started.elapsed();
    let outcome = match (signals::received(), outcome) {
        (Some(sig), Some(VmOutcome::Halted)) => VmOutcome::Signal(sig),
        (_, Some(o)) => o,
        (_, None) => VmOutcome::Halted,
    };
    Ok(RunReport { outcome, stats })
}

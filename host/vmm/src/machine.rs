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

use wasmvisor_exit::{InterruptLines, MemoryProtector, Subscriptions};
use wasmvisor_kvm::{install_kick_handler, BootMode, BootState, CpuidEntry, KickList, Kicker, Vm};
use wasmvisor_policy::{
    ComponentCache, ConsoleSink, KernelProfile, PolicyEngine, PolicyInstance, Recorder, Shared,
    SnapshotRequests,
};

use crate::boot::cpuid::{cpuid_table, per_vcpu_cpuid};
use crate::boot::linux::{load_linux, LinuxArgs};
use crate::boot::loader::{is_elf, load_elf, load_flat};
use crate::config::{DeviceSpec, PolicyCache, SerialBackend, VmConfig};
use crate::control::Services;
use crate::devices::builtin::BuiltinDevice;
use crate::devices::debug_exit::DebugExit;
use crate::devices::i8042::I8042;
use crate::devices::pci::PciPlatform;
use crate::devices::serial::Uart;
use crate::error::VmmError;
use crate::gdb::{GdbLink, GdbServer, Listener, VmParts as GdbParts};
use crate::outcome::VmOutcome;
use crate::policies::hotswap::{HotSwap, HotSwapParts};
use crate::policies::observer::{Observer, ObserverStats, DEFAULT_RING};
use crate::policies::policy_set::{unique_name, PolicyEnv, Prepared, Slot};
use crate::policies::quiesce::Quiesce;
use crate::policies::routing::{plan_routes, Claims};
use crate::policies::slot::VcpuPolicy;
use crate::signals;
use crate::snapshot::format::VmRecord;
use crate::snapshot::{Restore, SnapshotParts, Snapshots};
use crate::stats::Stats;
use crate::vcpu::hook::ExitHook;
use crate::vcpu::worker::{StopFlag, VcpuWorker, VmHandles};
use crate::vcpu::LentVcpu;

/// Default load address for flat binaries: just above the host-reserved
/// low memory.
pub const DEFAULT_LOAD_ADDR: u64 = wasmvisor_kvm::HOST_RESERVED_END;

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: VmOutcome,
    pub stats: Stats,
    /// With `--record`: the policy calls recorded, or why the recording
    /// is incomplete.
    pub recording: Option<Result<u64, String>>,
    /// The ended VM, still open so that the outcome can be reported
    /// before the kernel tears it down.
    pub remains: Remains,
}

/// An ended VM whose kernel objects are still open. Closing a VM with an
/// in-kernel irqchip takes the kernel about 16 ms on this host, so the
/// report is printed first. Dropping it closes the VM here;
/// [`Remains::hand_off`] leaves the teardown to a helper process instead.
#[derive(Default)]
pub struct Remains {
    vm: Option<Arc<Vm>>,
}

impl std::fmt::Debug for Remains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remains")
            .field("open", &self.vm.is_some())
            .finish()
    }
}

impl Remains {
    /// For a process about to exit: leaves closing the VM, and unmapping
    /// its RAM, to a helper that waits for this process to end
    /// (`wasmvisor_kvm::teardown`). The VM is not closed here even if the
    /// helper could not start; the process's exit closes it then.
    pub fn hand_off(mut self) -> std::io::Result<()> {
        let started = match &self.vm {
            Some(_) => wasmvisor_kvm::teardown::hand_off(),
            None => Ok(()),
        };
        // Closing our references would unmap the RAM on this side; exit
        // does it for free once the helper holds the rest.
        std::mem::forget(self.vm.take());
        started
    }
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

/// Builds the VM described by `config` and runs it until it ends.
pub fn run(config: &VmConfig, console: Arc<dyn ConsoleSink>) -> Result<RunReport, VmmError> {
    run_with_hook(config, console, None)
}

/// The engine, with the precompiled-policy cache the config asks for.
fn engine(config: &VmConfig) -> Result<PolicyEngine, VmmError> {
    let engine = PolicyEngine::new().map_err(|e| VmmError::Engine(e.to_string()))?;
    Ok(match &config.policy_cache {
        PolicyCache::Off => engine,
        PolicyCache::Dir(dir) => engine.with_cache(ComponentCache::open(dir)?),
        PolicyCache::Default => match ComponentCache::default_dir().map(ComponentCache::open) {
            Some(Ok(cache)) => engine.with_cache(cache),
            Some(Err(e)) => {
                eprintln!("wasmvisor: {e}; policies are compiled without a cache");
                engine
            }
            None => engine,
        },
    })
}

/// Loads the flat or ELF guest image into `vm` and says how it starts.
fn load_guest(config: &VmConfig, vm: &Vm) -> Result<BootState, VmmError> {
    let image = read_file(&config.guest.path, "guest image", MAX_IMAGE_BYTES)?;
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
    Ok(BootState {
        mode: config
            .guest
            .mode
            .unwrap_or(if elf { BootMode::Long } else { BootMode::Real }),
        entry: config.guest.entry.unwrap_or(loaded.entry),
        vcpu_count: config.vcpus,
        linux: None,
    })
}

/// The VM with its guest RAM: memfd-backed when a vfio-user device must
/// map it into its own process for DMA, anonymous otherwise.
fn new_vm(config: &VmConfig) -> Result<Vm, VmmError> {
    let shared_ram = config
        .devices
        .iter()
        .any(|d| matches!(d, DeviceSpec::VfioUser(_)));
    if !shared_ram {
        return Ok(Vm::new(config.mem_bytes)?);
    }
    let size = usize::try_from(config.mem_bytes)
        .map_err(|_| VmmError::Usage("guest RAM too large for this host".into()))?;
    let memory = wasmvisor_vfio::memfd_guest_memory(&[(vm_memory::GuestAddress(0), size)])
        .map_err(|e| VmmError::Engine(format!("cannot create memfd guest RAM: {e}")))?;
    Ok(Vm::with_memory(config.mem_bytes, memory)?)
}

/// The kernel profile the policies get (`kernel-*` imports): from
/// `--kernel-profile`, whose failure to parse is an error, or from the
/// `--kernel` image, whose failure is a warning (the boot goes on without
/// one). It is read here, before the guest runs, when a policy is loaded
/// at start, so that no exit pays for it; a policy loaded later has it
/// read on its first call.
fn kernel_profile(config: &VmConfig) -> Result<Option<Arc<KernelProfile>>, VmmError> {
    let (source, explicit) = match (&config.kernel_profile, &config.linux) {
        (Some(path), _) => (path, true),
        (None, Some(linux)) => (&linux.kernel, false),
        (None, None) => return Ok(None),
    };
    let kernel = Arc::new(KernelProfile::from_image(source));
    if explicit || !config.policies.is_empty() {
        match kernel.load() {
            Ok(_) => {}
            Err(e) if explicit => return Err(VmmError::KernelProfile(e)),
            Err(e) => {
                eprintln!("wasmvisor: warning: no kernel profile for the policies: {e}");
                return Ok(None);
            }
        }
    }
    Ok(Some(kernel))
}

/// [`run`], with an exit hook (native code) that sees every exit before the
/// policies (benchmarks). The VM is built in named steps: the platform,
/// the guest, the host state the policies share, the built-in devices,
/// the policies, their routes, the vCPUs, and the control services.
pub fn run_with_hook(
    config: &VmConfig,
    console: Arc<dyn ConsoleSink>,
    hook: Option<Arc<dyn ExitHook>>,
) -> Result<RunReport, VmmError> {
    config.check()?;
    // Before anything else: a --gdb port in use is a startup error.
    let gdb_listener = config.gdb.as_ref().map(Listener::bind).transpose()?;
    let engine = engine(config)?;
    let vm = Arc::new(new_vm(config)?);
    let irq = pc_platform(config, &vm)?;
    let boot = match &config.restore {
        Some(r) => {
            r.check_host(&vm.supported_cpuid()?)?;
            r.fill_ram(vm.memory())?;
            None
        }
        None => Some(boot_guest(config, &vm)?),
    };
    let shared = shared_state(config, &console)?;
    // Built-in devices come before the policies: passthrough devices are
    // DMA-mapped before any policy's init can ask what was mapped.
    let (builtins, pci_platform) = builtin_devices(config, &vm, &console, &irq, &shared)?;
    let protector: Arc<dyn MemoryProtector> = vm.memslots();
    let quiesce = Arc::new(Quiesce::new(config.vcpus as usize));
    let kicks = Arc::new(KickList::new(config.vcpus as usize));
    let snapshots = Arc::new(Snapshots::new(SnapshotParts {
        vm: Arc::clone(&vm),
        mem_bytes: config.mem_bytes,
        vcpus: config.vcpus as usize,
        quiesce: Arc::clone(&quiesce),
        kick: {
            let kicks = Arc::clone(&kicks);
            Box::new(move || kicks.kick_all())
        },
        builtins: builtins.clone(),
        refusal: snapshot_refusal(config),
        record: vm_record(config),
        kernel: shared.kernel().cloned(),
    }));
    let env = PolicyEnv {
        engine,
        memory: vm.memory().clone(),
        shared: Arc::clone(&shared),
        protector: Arc::clone(&protector),
        ram_size: config.mem_bytes,
        vcpu_count: config.vcpus,
        irq: irq.clone(),
        snapshots: Some(Arc::clone(&snapshots) as Arc<dyn SnapshotRequests>),
    };
    let mut prepared = prepare_policies(config, &env)?;
    if let Some(r) = &config.restore {
        restore_policy_states(r, &mut prepared)?;
    }
    let names: Vec<String> = prepared.iter().map(|p| p.slot.name.clone()).collect();
    let builtin_claims: Vec<Claims> = builtins.iter().map(|b| b.claims()).collect();
    let sub_refs: Vec<&Subscriptions> = prepared.iter().map(|p| &p.slot.subs).collect();
    let plan = plan_routes(&sub_refs, &builtin_claims).map_err(VmmError::Routes)?;
    plan.tell_devices(&builtins);
    if !plan.routes.msr_filter().is_empty() {
        vm.set_msr_filter(plan.routes.msr_filter())?;
    }
    let routes = plan.routes;

    // The CPUID table is the same on every vCPU but for the APIC IDs; the
    // policies are asked once, through vCPU 0's instances.
    let subs: Vec<Subscriptions> = prepared.iter().map(|p| p.slot.subs.clone()).collect();
    let mut first: Vec<&mut PolicyInstance<LentVcpu>> = prepared
        .iter_mut()
        .filter_map(|p| p.instances.first_mut())
        .collect();
    let cpuid = match &config.restore {
        Some(r) => r.cpuid(),
        None => cpuid_table(&vm.supported_cpuid()?, &mut first, &subs, &names)?,
    };

    let control = Arc::new(StopFlag::default());
    let gdb_link = config
        .gdb
        .as_ref()
        .map(|g| Arc::new(GdbLink::new(config.vcpus as usize, g.wait)));
    let handles = VmHandles {
        routes,
        builtins: builtins.clone(),
        hook,
        memory: vm.memory().clone(),
        protector,
        shared: Arc::clone(&shared),
        control: Arc::clone(&control),
        quiesce: Arc::clone(&quiesce),
        kicks: Arc::clone(&kicks),
        snapshots: Arc::clone(&snapshots),
        hold_on_fault: config.hold_on_fault,
        gdb: gdb_link.clone(),
        time_every_call: config.time_every_call,
    };
    let mut observers = start_observers(config, &mut prepared, &shared)?;
    let start = VcpuStart {
        boot: boot.as_ref(),
        irqchip: irq.is_some(),
        cpuid: &cpuid,
    };
    let (workers, slots) = vcpu_workers(config, &vm, start, prepared, &handles, &observers)?;
    if let Some(r) = &config.restore {
        // After the vCPUs exist (their LAPICs are part of the irqchip).
        vm.restore_state(&r.vm)?;
        crate::snapshot::restore_devices(&builtins, &r.devices).map_err(VmmError::Engine)?;
    }

    let gdb_server = match (gdb_listener, gdb_link, &config.gdb) {
        (Some(listener), Some(link), Some(spec)) => {
            let kicks = Arc::clone(&kicks);
            let parts = GdbParts {
                quiesce: Arc::clone(&quiesce),
                kick: Arc::new(move || kicks.kick_all()),
                memory: vm.memory().clone(),
                protector: vm.memslots(),
                control: Arc::clone(&control),
                kernel: shared.kernel().cloned(),
            };
            let vcpus = config.vcpus as usize;
            Some(GdbServer::start(listener, link, parts, vcpus, spec.wait)?)
        }
        _ => None,
    };
    let services = if config.control.is_some() || config.watch {
        let kicks = Arc::clone(&kicks);
        let swap = Arc::new(HotSwap::new(HotSwapParts {
            env,
            vm: Arc::clone(&vm),
            quiesce,
            kick: Box::new(move || kicks.kick_all()),
            builtin_claims,
            builtins: builtins.clone(),
            cpuid,
            default_deadline: config.policy_deadline,
            slots,
        }));
        Some(Services::start(
            swap,
            snapshots,
            config.control.as_deref(),
            config.watch,
        )?)
    } else {
        None
    };
    let mut outcome = run_workers(workers, &control, &kicks, &names);
    if let Some(gdb) = gdb_server {
        let mut ended = match &outcome {
            Ok(r) => r.outcome.clone(),
            Err(e) => VmOutcome::HostFailure(e.to_string()),
        };
        gdb.finish(&mut ended);
        if let Ok(r) = outcome.as_mut() {
            r.outcome = ended;
        }
    }
    drop(services);
    let observer_stats: Vec<ObserverStats> = observers
        .iter_mut()
        .enumerate()
        .filter_map(|(i, o)| o.take().map(|o| (i, o)))
        .map(|(i, o)| {
            let queued = outcome
                .as_ref()
                .ok()
                .and_then(|r| r.stats.policies.get(i))
                .map_or(0, |p| p.declined);
            o.finish(queued)
        })
        .collect();
    let mut report = outcome?;
    report.remains = Remains { vm: Some(vm) };
    report.stats.observers = observer_stats;
    if let Some(pci) = &pci_platform {
        report.stats.devices = pci.device_stats();
    }
    report.recording = shared
        .recorder()
        .map(|r| r.finish().map_err(|e| e.to_string()));
    Ok(report)
}

/// Starts a draining thread for each observer policy (`@observe`); by
/// chain position, `None` for the others.
fn start_observers(
    config: &VmConfig,
    prepared: &mut [Prepared],
    shared: &Arc<Shared>,
) -> Result<Vec<Option<Observer>>, VmmError> {
    prepared
        .iter_mut()
        .map(|p| {
            let Some(instance) = p.observer_instance.take() else {
                return Ok(None);
            };
            let ring = p.slot.spec.sandbox.observe.unwrap_or(DEFAULT_RING);
            let mut o = Observer::new(&p.slot.name, config.vcpus as usize, ring);
            o.start(instance, Arc::clone(shared))
                .map_err(|e| VmmError::Engine(format!("cannot start an observer thread: {e}")))?;
            Ok(Some(o))
        })
        .collect()
}

/// Hands each policy instance its `save-state` from the snapshot, by
/// chain position and vCPU.
fn restore_policy_states(r: &Restore, prepared: &mut [Prepared]) -> Result<(), VmmError> {
    for (p, states) in prepared.iter_mut().zip(&r.policy_states) {
        for (vcpu, instance) in p.instances.iter_mut().enumerate() {
            if let Some((_, state)) = states.iter().find(|(v, _)| *v == vcpu) {
                instance
                    .restore_state(state)
                    .map_err(|e| VmmError::Policy {
                        policy: p.slot.name.clone(),
                        reason: format!("restore-state from the snapshot failed: {e}"),
                    })?;
            }
        }
    }
    Ok(())
}

/// The VM as a snapshot's manifest describes it.
fn vm_record(config: &VmConfig) -> VmRecord {
    let kernel = config
        .kernel_profile
        .as_ref()
        .or(config.linux.as_ref().map(|l| &l.kernel))
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    VmRecord {
        mem_bytes: config.mem_bytes,
        vcpus: config.vcpus,
        irqchip: config.irqchip || config.linux.is_some() || !config.devices.is_empty(),
        serial: match config.serial {
            SerialBackend::Native => "native".into(),
            _ => "none".into(),
        },
        debug_exit: config.debug_exit,
        kernel_profile: kernel.map(|p| p.display().to_string()),
    }
}

/// Why a VM built from `config` cannot be snapshotted or reset, if it
/// cannot: device state outside this process (passthrough), or PCI
/// device state the snapshot does not carry yet.
fn snapshot_refusal(config: &VmConfig) -> Option<String> {
    let passthrough = config
        .devices
        .iter()
        .any(|d| matches!(d, DeviceSpec::Vfio(_) | DeviceSpec::VfioUser(_)));
    if passthrough {
        Some("it has a passed-through device, whose state lives outside wasmvisor".into())
    } else if !config.devices.is_empty() {
        Some("it has a PCI device, whose state snapshots do not carry yet".into())
    } else {
        None
    }
}

/// The in-kernel PIC, IOAPIC and PIT, when the VM needs interrupts (a
/// Linux boot, `--irqchip`, a PCI device); they must exist before the
/// first vCPU.
fn pc_platform(
    config: &VmConfig,
    vm: &Arc<Vm>,
) -> Result<Option<Arc<dyn InterruptLines>>, VmmError> {
    if config.irqchip || config.linux.is_some() || !config.devices.is_empty() {
        vm.create_pc_platform()?;
        Ok(Some(Arc::clone(vm) as Arc<dyn InterruptLines>))
    } else {
        Ok(None)
    }
}

/// Loads the kernel or guest image and writes the boot tables.
fn boot_guest(config: &VmConfig, vm: &Vm) -> Result<BootState, VmmError> {
    let boot = match &config.linux {
        Some(linux) => {
            let args = LinuxArgs {
                ram_size: config.mem_bytes,
                vcpus: config.vcpus,
                initrd: linux.initrd.as_deref(),
                cmdline: &linux.cmdline,
            };
            let loaded = load_linux(vm.memory(), &linux.kernel, &args)?;
            BootState {
                mode: loaded.mode,
                entry: loaded.entry,
                vcpu_count: config.vcpus,
                linux: Some(loaded.info),
            }
        }
        None => load_guest(config, vm)?,
    };
    boot.check()?;
    boot.write_tables(vm.memory())?;
    Ok(boot)
}

/// Console, events, the recording and the kernel profile: what every
/// policy and vCPU shares.
fn shared_state(
    config: &VmConfig,
    console: &Arc<dyn ConsoleSink>,
) -> Result<Arc<Shared>, VmmError> {
    let mut shared = Shared::new(Arc::clone(console), config.events.as_deref())
        .map_err(|e| VmmError::Engine(e.to_string()))?;
    if let Some(path) = &config.record {
        let recorder =
            Recorder::create(path, config.vcpus).map_err(|e| VmmError::Engine(e.to_string()))?;
        shared = shared.with_recorder(recorder);
    }
    if let Some(kernel) = kernel_profile(config)? {
        shared = shared.with_kernel(kernel);
    }
    Ok(Arc::new(shared))
}

/// The UART, the i8042, the debug-exit port and the PCI segment, in route
/// order.
type Builtins = (Vec<Arc<dyn BuiltinDevice>>, Option<Arc<PciPlatform>>);

fn builtin_devices(
    config: &VmConfig,
    vm: &Arc<Vm>,
    console: &Arc<dyn ConsoleSink>,
    irq: &Option<Arc<dyn InterruptLines>>,
    shared: &Shared,
) -> Result<Builtins, VmmError> {
    let mut builtins: Vec<Arc<dyn BuiltinDevice>> = Vec::new();
    if config.serial == SerialBackend::Native {
        builtins.push(Arc::new(Uart::new(Arc::clone(console), irq.clone())));
    }
    builtins.push(Arc::new(I8042));
    if let Some(port) = config.debug_exit {
        builtins.push(Arc::new(DebugExit::new(port)));
    }
    let mut pci_platform = None;
    if !config.devices.is_empty() {
        let pci = PciPlatform::build(vm, config.mem_bytes, &config.devices, &config.dma_domain)?;
        // Before any policy's init, which may ask (`dma-mappings`).
        shared.set_dma_mappings(pci.dma_mappings().to_vec());
        let pci = Arc::new(pci);
        pci_platform = Some(Arc::clone(&pci));
        builtins.push(pci);
    }
    Ok((builtins, pci_platform))
}

/// Instantiates and initialises every policy on every vCPU, then applies
/// what they protect at init.
fn prepare_policies(config: &VmConfig, env: &PolicyEnv) -> Result<Vec<Prepared>, VmmError> {
    let mut prepared: Vec<Prepared> = Vec::new();
    for (index, spec) in config.policies.iter().enumerate() {
        let mut spec = spec.clone();
        if let (false, Some(d)) = (spec.sandbox.deadline_set, config.policy_deadline) {
            spec.sandbox.limits.deadline = d;
        }
        let taken = prepared.iter().map(|p| p.slot.name.as_str());
        let name = unique_name(&spec.path, taken);
        prepared.push(env.prepare(&spec, index, &name, 1)?);
    }
    for p in &prepared {
        p.activate()?;
    }
    Ok(prepared)
}

/// Creates the vCPUs with their CPUID and boot state, and a worker for
/// each holding its instances of every policy; returns the workers and
/// the policies' slots (for hot swap).
/// How the vCPUs start: from a boot state (with the irqchip's LINT
/// wiring when there is one), or from a snapshot (`config.restore`).
struct VcpuStart<'a> {
    boot: Option<&'a BootState>,
    irqchip: bool,
    cpuid: &'a [CpuidEntry],
}

fn vcpu_workers(
    config: &VmConfig,
    vm: &Vm,
    start: VcpuStart<'_>,
    prepared: Vec<Prepared>,
    handles: &VmHandles,
    observers: &[Option<Observer>],
) -> Result<(Vec<VcpuWorker>, Vec<Slot>), VmmError> {
    let VcpuStart {
        boot,
        irqchip,
        cpuid,
    } = start;
    let mut per_vcpu: Vec<Vec<VcpuPolicy>> = (0..config.vcpus).map(|_| Vec::new()).collect();
    let mut slots = Vec::new();
    for (i, p) in prepared.into_iter().enumerate() {
        let rings = observers.get(i).and_then(Option::as_ref).map(|o| &o.rings);
        for (v, instance) in p.instances.into_iter().enumerate() {
            let mut policy = p.slot.for_vcpu(instance);
            policy.observer = rings.and_then(|r| r.get(v)).cloned();
            per_vcpu[v].push(policy);
        }
        slots.push(p.slot);
    }
    let mut workers = Vec::new();
    for (index, policies) in per_vcpu.into_iter().enumerate() {
        let mut vcpu = vm.create_vcpu(index as u32)?;
        vcpu.set_cpuid(&per_vcpu_cpuid(cpuid, vcpu.index()))?;
        match (boot, &config.restore) {
            (Some(boot), _) => {
                if irqchip {
                    // LINT0 takes the PIC's interrupts, LINT1 NMIs, as on a PC.
                    vcpu.set_lapic_lints()?;
                }
                // Linux: the boot CPU starts at the entry; the others wait
                // in their LAPIC for the kernel's INIT/SIPI.
                if boot.linux.is_none() || index == 0 {
                    vcpu.boot(boot)?;
                }
            }
            (None, Some(r)) => {
                if let Some((_, state)) = r.vcpus.iter().find(|(i, _)| *i == index) {
                    vcpu.restore_state(state)?;
                }
            }
            (None, None) => unreachable!("a VM either boots or is restored"),
        }
        workers.push(VcpuWorker::new(vcpu, policies, handles.clone()));
    }
    Ok((workers, slots))
}

/// Starts one thread per vCPU and waits for the VM to end.
fn run_workers(
    workers: Vec<VcpuWorker>,
    control: &Arc<StopFlag>,
    kicks: &KickList,
    names: &[String],
) -> Result<RunReport, VmmError> {
    install_kick_handler()?;
    signals::install()
        .map_err(|e| VmmError::Engine(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx) = mpsc::channel::<(VmOutcome, Stats)>();
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
        kicks.register(i, &handle);
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
            Ok((end, vcpu_stats)) => {
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
    // No kick may target a thread once it is joined.
    kicks.clear();
    for h in handles {
        let _ = h.join();
    }
    stats.wall = started.elapsed();
    let outcome = match (signals::received(), outcome) {
        (Some(sig), Some(VmOutcome::Halted)) => VmOutcome::Signal(sig),
        (_, Some(o)) => o,
        (_, None) => VmOutcome::Halted,
    };
    Ok(RunReport {
        outcome,
        stats,
        recording: None,
        remains: Remains::default(),
    })
}

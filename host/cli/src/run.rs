//! `wasmvisor run`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use wasmvisor_policy::StdoutConsole;
use wasmvisor_vmm::config::{
    parse_dma_window, parse_mode, parse_number, parse_size, read_config_file, ConfigError,
    DeviceArg, GuestSpec, LinuxSpec, PolicyCache, PolicySpec, SerialBackend, VmConfig,
    DEFAULT_CMDLINE,
};
use wasmvisor_vmm::gdb::{GdbEndpoint, GdbSpec};
use wasmvisor_vmm::loader::is_elf;
use wasmvisor_vmm::outcome::VmOutcome;
use wasmvisor_vmm::pci::DmaDomain;

use crate::assets;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Resume the VM saved in this snapshot directory (`wasmvisor vm snapshot`), with its policies and their state; the machine, guest and policies are the snapshot's (docs/snapshots.md).
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "guest", "kernel", "kernel_profile", "initrd", "cmdline", "mode", "load_addr", "entry",
        "policies", "config", "vcpus", "mem", "serial", "devices", "dma_windows", "irqchip",
    ])]
    restore: Option<PathBuf>,
    /// Guest image: a flat binary or an ELF64 executable.
    #[arg(long, value_name = "FILE")]
    guest: Option<PathBuf>,
    /// Boot this Linux kernel instead of a guest image: a bzImage, or an ELF vmlinux with a PVH note (docs/linux.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["guest", "mode", "load_addr", "entry"])]
    kernel: Option<PathBuf>,
    /// The kernel image (vmlinux or bzImage) whose symbols (kallsyms) and types (BTF) the policies' kernel-* imports use, for a guest booted some other way; --kernel's own image is used without it (docs/introspection.md).
    #[arg(long, value_name = "FILE")]
    kernel_profile: Option<PathBuf>,
    /// An initrd for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line for --kernel [default: console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1].
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    cmdline: Option<String>,
    /// CPU mode at entry: real, protected or long [default: long for ELF, real for flat].
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Where a flat binary is loaded [default: 0x8000].
    #[arg(long, value_name = "ADDR")]
    load_addr: Option<String>,
    /// Entry point [default: the ELF entry or the load address].
    #[arg(long, value_name = "ADDR")]
    entry: Option<String>,
    /// A policy component, optionally with config: P.wasm[:key=value,...]. Repeatable; earlier policies take precedence.
    #[arg(long = "policy", value_name = "P.wasm[:k=v,...]")]
    policies: Vec<String>,
    /// A TOML file with the guest, machine and policies (see docs/config.md); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Number of vCPUs (1-16) [default: 1].
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest RAM, e.g. 64M (1M-3G) [default: 64M].
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// The console: `native`, the built-in 16550 UART on 0x3F8 (COM1), which prints what the guest writes to it unless a policy (the serial policy) answers those ports first; or `none`, no UART [default: native].
    #[arg(long, value_name = "native|none")]
    serial: Option<String>,
    /// Attach a device; repeatable. `debug-exit[=PORT]`: QEMU's isa-debug-exit at PORT [default: 0xf4], a write of V ends the run with exit code (V << 1) | 1. PCI (docs/pci.md; brings the in-kernel irqchip): `test` (the emulated test device), `vfio=BDF-or-sysfs-path` or `vfio-user=SOCKET`.
    #[arg(
        long = "device",
        value_name = "debug-exit[=PORT]|test|vfio=BDF|vfio-user=SOCKET"
    )]
    devices: Vec<String>,
    /// Let devices reach only this guest-physical range by DMA (the IOMMU mapping): BASE+SIZE, 4 KiB-aligned, e.g. 0x100000+1M; repeatable [default: all of guest RAM] (docs/vfio.md).
    #[arg(long = "dma-window", value_name = "BASE+SIZE")]
    dma_windows: Vec<String>,
    /// Give the guest KVM's in-kernel PIC, IOAPIC and PIT (always on with --kernel); HLT then waits for an interrupt.
    #[arg(long)]
    irqchip: bool,
    /// Per-call deadline in milliseconds for policies without their own @deadline [default: 10].
    #[arg(long, value_name = "MS")]
    policy_deadline_ms: Option<u64>,
    /// Print detailed statistics (JSON) after the run.
    #[arg(long)]
    stats: bool,
    /// Record every exit delivered to policies, with what they read and answered, for `wasmvisor replay` (docs/record-replay.md).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Write policy-emitted events as JSON lines to this file.
    #[arg(long, value_name = "OUT.jsonl")]
    events: Option<PathBuf>,
    /// Serve the control socket here (mode 0600) for `wasmvisor policy list|swap|load|unload`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Reload a policy when its file changes on disk.
    #[arg(long)]
    watch: bool,
    /// When the guest fails (triple fault, KVM internal error), keep the VM held where it stopped, for `wasmvisor vm dump` or `vm snapshot` through --control, until Ctrl-C or SIGTERM; the exit code is then the failure's.
    #[arg(long)]
    hold_on_fault: bool,
    /// Serve gdb's remote protocol here: tcp:PORT (on 127.0.0.1), tcp:ADDR:PORT or unix:PATH; the VM waits for gdb before its first instruction unless --gdb-nowait (docs/gdb.md).
    #[arg(long, value_name = "tcp:PORT|unix:PATH")]
    gdb: Option<String>,
    /// With --gdb: run at once; gdb may attach later.
    #[arg(long, requires = "gdb")]
    gdb_nowait: bool,
    /// Keep precompiled policies in this directory [default: $WASMVISOR_CACHE_DIR, $XDG_CACHE_HOME/wasmvisor/policies or ~/.cache/wasmvisor/policies].
    #[arg(long, value_name = "DIR", conflicts_with = "no_policy_cache")]
    policy_cache: Option<PathBuf>,
    /// Compile every policy on load; read and write no cache.
    #[arg(long)]
    no_policy_cache: bool,
}

/// The snapshot's config, with this run's options (events, recording,
/// control socket, cache, deadline).
fn restore_config(args: &RunArgs, dir: &std::path::Path) -> Result<VmConfig> {
    let restore = wasmvisor_vmm::snapshot::Restore::load(dir)?;
    let mut config = restore.config()?;
    config.restore = Some(Arc::new(restore));
    run_options(args, &mut config)?;
    config.check()?;
    Ok(config)
}

/// Options that belong to a run, not to the machine: shared by a boot and
/// a restore.
fn run_options(args: &RunArgs, config: &mut VmConfig) -> Result<()> {
    if let Some(ms) = args.policy_deadline_ms {
        if ms == 0 || ms > 60_000 {
            bail!("--policy-deadline-ms {ms} is out of range: use 1 to 60000");
        }
        config.policy_deadline = Some(Duration::from_millis(ms));
    }
    config.events = args.events.clone();
    config.record = args.record.clone();
    config.control = args.control.clone();
    config.watch = args.watch;
    config.hold_on_fault = args.hold_on_fault;
    config.gdb = match &args.gdb {
        Some(endpoint) => Some(GdbSpec {
            endpoint: GdbEndpoint::parse(endpoint).map_err(anyhow::Error::msg)?,
            wait: !args.gdb_nowait,
        }),
        None => None,
    };
    config.time_every_call = args.stats;
    config.policy_cache = match (&args.policy_cache, args.no_policy_cache) {
        (_, true) => PolicyCache::Off,
        (Some(dir), false) => PolicyCache::Dir(dir.clone()),
        (None, false) => PolicyCache::Default,
    };
    Ok(())
}

/// Builds the VM config from the file (or the demo) and the flags.
fn build_config(args: &RunArgs) -> Result<VmConfig> {
    if let Some(dir) = &args.restore {
        return restore_config(args, dir);
    }
    let demo = args.guest.is_none() && args.config.is_none() && args.kernel.is_none();
    let file = match (&args.config, demo) {
        (Some(path), _) => Some(read_config_file(path)?),
        (None, true) => Some(read_config_file(&assets::dir()?.join("demo.toml"))?),
        (None, false) => None,
    };
    let file_guest = file.as_ref().and_then(|f| f.guest.clone());
    let mut guest = match (args.guest.as_ref().or(args.kernel.as_ref()), file_guest) {
        (Some(path), _) => GuestSpec {
            path: path.clone(),
            mode: None,
            load_addr: None,
            entry: None,
        },
        (None, Some(g)) => g,
        (None, None) => {
            bail!("no guest: pass --guest FILE or a --config file with a [guest] table")
        }
    };
    if let Some(m) = &args.mode {
        guest.mode = Some(parse_mode(m)?);
    }
    if let Some(a) = &args.load_addr {
        guest.load_addr = Some(parse_number(a)?);
    }
    if let Some(e) = &args.entry {
        guest.entry = Some(parse_number(e)?);
    }
    let mut config = VmConfig::new(guest);
    if let Some(f) = &file {
        config.policies = f.policies.clone();
        config.vcpus = f.vcpus.unwrap_or(config.vcpus);
        config.mem_bytes = f.mem_bytes.unwrap_or(config.mem_bytes);
        config.serial = f.serial.unwrap_or(config.serial);
        config.irqchip = f.irqchip.unwrap_or(config.irqchip);
    }
    if !args.policies.is_empty() {
        config.policies = args
            .policies
            .iter()
            .map(|p| PolicySpec::parse(p))
            .collect::<Result<_, _>>()?;
    }
    if let Some(n) = args.vcpus {
        config.vcpus = n;
    }
    if let Some(m) = &args.mem {
        config.mem_bytes = parse_size(m)?;
    }
    if let Some(s) = &args.serial {
        config.serial = SerialBackend::parse(s)
            .with_context(|| format!("invalid --serial `{s}`: use native or none"))?;
    }
    run_options(args, &mut config)?;
    config.linux = args.kernel.as_ref().map(|kernel| LinuxSpec {
        kernel: kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args
            .cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
    });
    config.irqchip |= args.irqchip;
    config.kernel_profile = args.kernel_profile.clone();
    for d in &args.devices {
        match DeviceArg::parse(d)? {
            DeviceArg::Pci(spec) => config.devices.push(spec),
            DeviceArg::DebugExit(port) => config.debug_exit = Some(port),
        }
    }
    let windows = args
        .dma_windows
        .iter()
        .map(|w| parse_dma_window(w))
        .collect::<Result<Vec<_>, _>>()?;
    config.dma_domain = DmaDomain::new(&windows).map_err(ConfigError::from)?;
    config.check()?;
    Ok(config)
}

/// A flat image starts in real mode unless `--mode` says otherwise; one
/// built for protected or long mode then dies at its first instruction
/// that means something else in 16 bits, which reads like a host bug.
fn mode_hint(config: &VmConfig, outcome: &VmOutcome) -> Option<&'static str> {
    let flat_real_by_default = config.linux.is_none()
        && config.guest.mode.is_none()
        && std::fs::read(&config.guest.path).is_ok_and(|b| !is_elf(&b));
    (flat_real_by_default && matches!(outcome, VmOutcome::GuestFault(_))).then_some(
        "a flat binary starts in 16-bit real mode; if it was built for 32- or 64-bit code, pass --mode protected or --mode long",
    )
}

pub fn run(args: RunArgs) -> Result<i32> {
    let config = build_config(&args)?;
    let report =
        wasmvisor_vmm::run(&config, Arc::new(StdoutConsole)).context("cannot start the VM")?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    eprintln!("wasmvisor: {}", report.outcome.describe());
    if let Some(hint) = mode_hint(&config, &report.outcome) {
        eprintln!("wasmvisor: hint: {hint}");
    }
    eprint!("{}", report.stats.summary());
    match (&report.recording, &config.record) {
        (Some(Ok(n)), Some(path)) => {
            eprintln!("wasmvisor: recorded {n} policy calls to {}", path.display())
        }
        (Some(Err(why)), _) => eprintln!("wasmvisor: warning: the recording is incomplete: {why}"),
        _ => {}
    }
    if args.stats {
        eprintln!("stats: {}", serde_json::to_string(&report.stats)?);
    }
    // All is said: the kernel's teardown of the VM need not hold up the
    // exit (docs/performance.md §8). If no helper can start, exiting
    // closes the VM as before.
    let code = report.outcome.exit_code();
    let _ = report.remains.hand_off();
    Ok(code)
}

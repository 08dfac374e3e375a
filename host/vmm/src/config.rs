//! What to run: the guest, the policies and the machine, from CLI flags or
//! a TOML file (format in `docs/config.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use wasmvisor_kvm::{BootMode, MAX_BOOT_VCPUS, MMIO_HOLE_START};
use wasmvisor_pci::{DmaDomain, DmaWindowError, Window};

use crate::policies::sandbox::{Sandbox, SandboxError};
pub use crate::units::{format_size, parse_number, parse_size, UnitError};

/// A configuration value is unusable.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("--mem {0} is out of range: guest RAM must be between 1M and 3G")]
    MemRange(String),
    #[error("--vcpus {0} is out of range: wasmvisor runs 1 to {MAX_BOOT_VCPUS} vCPUs")]
    VcpuRange(u32),
    #[error("invalid --device `{0}`: use test, vfio=BDF-or-sysfs-path, vfio-user=SOCKET or debug-exit[=PORT]")]
    Device(String),
    #[error("invalid --dma-window `{0}`: use BASE+SIZE, e.g. 0x100000+1M")]
    DmaWindowSyntax(String),
    #[error("--dma-window: {0}")]
    DmaWindow(#[from] DmaWindowError),
    #[error("invalid mode `{0}`: use real, protected or long")]
    Mode(String),
    #[error("invalid policy config `{0}`: expected key=value")]
    PolicyConfig(String),
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("config file {path}: {reason}")]
    Toml { path: String, reason: String },
}

/// One policy to load, with its config pairs (keys may repeat) and its
/// sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub path: PathBuf,
    pub config: Vec<(String, String)>,
    pub sandbox: Sandbox,
}

impl PolicySpec {
    /// Splits `PATH[:pairs]` into the path and the rest (`""` or
    /// `":pairs"`): the path ends at the first `.wasm:`.
    pub fn split(arg: &str) -> (&str, &str) {
        match arg.find(".wasm:") {
            Some(i) => arg.split_at(i + 5),
            None => (arg, ""),
        }
    }

    /// Parses `PATH[:key=value,key=value...]`. The path ends at the first
    /// `.wasm:` (or is the whole argument). Keys starting with `@` are
    /// sandbox settings for the host; the rest go to the policy.
    pub fn parse(arg: &str) -> Result<PolicySpec, ConfigError> {
        let (path, rest) = Self::split(arg);
        let mut config = Vec::new();
        let mut sandbox = Sandbox::default();
        let pairs = rest.strip_prefix(':').unwrap_or(rest);
        for pair in pairs.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::PolicyConfig(pair.to_string()))?;
            if k.is_empty() || k == "@" {
                return Err(ConfigError::PolicyConfig(pair.to_string()));
            }
            match k.strip_prefix('@') {
                Some(setting) => sandbox.set(setting, v)?,
                None => config.push((k.to_string(), v.to_string())),
            }
        }
        Ok(PolicySpec {
            path: PathBuf::from(path),
            config,
            sandbox,
        })
    }
}

/// Which console device serves port 0x3F8 when no policy claims it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SerialBackend {
    /// The built-in 16550 at 0x3F8, behind every policy: the console
    /// unless a policy (the serial policy) answers the UART's ports.
    #[default]
    Native,
    /// No built-in UART: nobody answers 0x3F8 unless a policy does
    /// (`--serial none`, or its older name `policy`).
    None,
}

impl SerialBackend {
    /// Parses `native`, `none` or `policy` (the older name of `none`).
    pub fn parse(s: &str) -> Option<SerialBackend> {
        match s {
            "native" => Some(SerialBackend::Native),
            "none" | "policy" => Some(SerialBackend::None),
            _ => None,
        }
    }
}

/// QEMU's isa-debug-exit port in the configuration most test guests use
/// (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// One `--device` argument: a PCI device, or the debug-exit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceArg {
    Pci(DeviceSpec),
    /// `debug-exit[=PORT]`: a write of V ends the run with exit code
    /// (V << 1) | 1, as QEMU's isa-debug-exit does.
    DebugExit(u16),
}

impl DeviceArg {
    /// Parses `debug-exit`, `debug-exit=PORT`, or a PCI device.
    pub fn parse(arg: &str) -> Result<DeviceArg, ConfigError> {
        match arg.split_once('=') {
            None if arg == "debug-exit" => Ok(DeviceArg::DebugExit(DEBUG_EXIT_PORT)),
            Some(("debug-exit", port)) => parse_number(port)
                .ok()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| p.checked_add(3).is_some())
                .map(DeviceArg::DebugExit)
                .ok_or_else(|| ConfigError::Device(arg.into())),
            _ => DeviceSpec::parse(arg).map(DeviceArg::Pci),
        }
    }
}

/// The guest image and how to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    pub path: PathBuf,
    /// Defaults: long for ELF, real for flat binaries.
    pub mode: Option<BootMode>,
    /// Flat binaries only; default 0x8000.
    pub load_addr: Option<u64>,
    /// Default: the ELF entry, or the load address.
    pub entry: Option<u64>,
}

/// A Linux kernel to boot instead of a guest image (`docs/linux.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxSpec {
    /// A bzImage, or an ELF vmlinux with a PVH entry note.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// The command line a kernel gets when none is given: the serial console,
/// early output on it, and a reboot through the keyboard controller.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1";

/// A PCI device to attach (`--device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// wasmvisor's emulated test device (`--device test`).
    Test,
    /// A host device passed through with VFIO (`--device vfio=BDF-or-sysfs-path`).
    Vfio(String),
    /// A device served by another process over vfio-user
    /// (`--device vfio-user=SOCKET`).
    VfioUser(PathBuf),
}

impl DeviceSpec {
    /// Parses `test`, `vfio=TARGET` or `vfio-user=SOCKET`.
    pub fn parse(arg: &str) -> Result<DeviceSpec, ConfigError> {
        match arg.split_once('=') {
            None if arg == "test" => Ok(DeviceSpec::Test),
            Some(("vfio", target)) if !target.is_empty() => Ok(DeviceSpec::Vfio(target.into())),
            Some(("vfio-user", socket)) if !socket.is_empty() => {
                Ok(DeviceSpec::VfioUser(PathBuf::from(socket)))
            }
            _ => Err(ConfigError::Device(arg.into())),
        }
    }
}

/// Where precompiled policies are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PolicyCache {
    /// `$WASMVISOR_CACHE_DIR`, `$XDG_CACHE_HOME/wasmvisor/policies` or
    /// `~/.cache/wasmvisor/policies`; a run goes on uncached if it is
    /// unusable.
    #[default]
    Default,
    /// This directory; an unusable one is an error.
    Dir(PathBuf),
    /// No cache: every load compiles.
    Off,
}

/// Everything needed to build and run one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub guest: GuestSpec,
    pub policies: Vec<PolicySpec>,
    pub vcpus: u32,
    pub mem_bytes: u64,
    pub serial: SerialBackend,
    pub events: Option<PathBuf>,
    /// Call deadline of policies that set none (`@deadline`), including
    /// those loaded while the VM runs.
    pub policy_deadline: Option<Duration>,
    /// The control socket (`docs/control.md`), if any.
    pub control: Option<PathBuf>,
    /// Reload a policy when its file changes.
    pub watch: bool,
    pub policy_cache: PolicyCache,
    /// Boot this kernel (the guest image is ignored).
    pub linux: Option<LinuxSpec>,
    /// Give a plain guest KVM's in-kernel PIC, IOAPIC and PIT, as Linux
    /// boots always get. HLT then waits in the kernel for an interrupt.
    pub irqchip: bool,
    /// Record every policy call to this file (`docs/record-replay.md`).
    pub record: Option<PathBuf>,
    /// PCI devices (`docs/pci.md`); any device brings the irqchip.
    pub devices: Vec<DeviceSpec>,
    /// The isa-debug-exit port (`--device debug-exit[=PORT]`), if any.
    pub debug_exit: Option<u16>,
    /// The kernel image the policies' kernel profile is read from
    /// (`--kernel-profile`); without it, a `--kernel` boot's own image.
    pub kernel_profile: Option<PathBuf>,
    /// What the devices may reach by DMA (`--dma-window`); unrestricted
    /// by default.
    pub dma_domain: DmaDomain,
    /// Start from this snapshot (`run --restore DIR`) instead of booting
    /// the guest; the rest of the config is the snapshot's own
    /// ([`crate::snapshot::Restore::config`]).
    pub restore: Option<std::sync::Arc<crate::snapshot::Restore>>,
    /// Keep a VM whose guest failed (triple fault, KVM internal error)
    /// held for inspection until it is stopped (`--hold-on-fault`).
    pub hold_on_fault: bool,
    /// Time every policy call (`--stats`), not one in
    /// [`crate::vcpu::dispatch::DEFAULT_TIME_EVERY`].
    pub time_every_call: bool,
    /// Serve gdb's remote protocol (`--gdb`, docs/gdb.md).
    pub gdb: Option<crate::gdb::GdbSpec>,
}

impl VmConfig {
    /// A config with defaults for everything but the guest.
    pub fn new(guest: GuestSpec) -> VmConfig {
        VmConfig {
            guest,
            policies: Vec::new(),
            vcpus: 1,
            mem_bytes: 64 << 20,
            serial: SerialBackend::Native,
            events: None,
            policy_deadline: None,
            control: None,
            watch: false,
            policy_cache: PolicyCache::Default,
            linux: None,
            irqchip: false,
            record: None,
            devices: Vec::new(),
            debug_exit: None,
            kernel_profile: None,
            dma_domain: DmaDomain::unrestricted(),
            restore: None,
            hold_on_fault: false,
            time_every_call: false,
            gdb: None,
        }
    }

    /// Checks ranges the type system does not.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_BOOT_VCPUS {
            return Err(ConfigError::VcpuRange(self.vcpus));
        }
        if self.mem_bytes < (1 << 20) || self.mem_bytes > MMIO_HOLE_START {
            return Err(ConfigError::MemRange(format_size(self.mem_bytes)));
        }
        Ok(())
    }
}

/// Parses one `--dma-window BASE+SIZE`: the base as a number, the size
/// as a number or a size (`0x100000`, `1M`). Alignment is checked when
/// the windows make a [`DmaDomain`].
pub fn parse_dma_window(s: &str) -> Result<Window, ConfigError> {
    let err = || ConfigError::DmaWindowSyntax(s.to_string());
    let (base, size) = s.split_once('+').ok_or_else(err)?;
    let base = parse_number(base).map_err(|_| err())?;
    let size = parse_number(size)
        .or_else(|_| parse_size(size))
        .map_err(|_| err())?;
    Ok(Window::new(base, size))
}

/// Parses `real`, `protected` or `long`.
pub fn parse_mode(s: &str) -> Result<BootMode, ConfigError> {
    match s {
        "real" => Ok(BootMode::Real),
        "protected" => Ok(BootMode::Protected),
        "long" => Ok(BootMode::Long),
        _ => Err(ConfigError::Mode(s.to_string())),
    }
}

/// A TOML number or string (sizes and addresses may be either).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Str(String),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Str(s) => s.clone(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// A config value: one scalar, or a list (repeated key).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ConfigValue {
    One(Scalar),
    Many(Vec<Scalar>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileGuest {
    path: PathBuf,
    mode: Option<String>,
    load_addr: Option<Scalar>,
    entry: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    path: PathBuf,
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    sandbox: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    guest: Option<FileGuest>,
    vcpus: Option<u32>,
    mem: Option<Scalar>,
    serial: Option<String>,
    irqchip: Option<bool>,
    #[serde(default)]
    policy: Vec<FilePolicy>,
}

/// The parts of a TOML config file; paths are resolved against its folder.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub guest: Option<GuestSpec>,
    pub vcpus: Option<u32>,
    pub mem_bytes: Option<u64>,
    pub serial: Option<SerialBackend>,
    pub irqchip: Option<bool>,
    pub policies: Vec<PolicySpec>,
}

/// Reads a TOML config file.
pub fn read_config_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let toml_err = |reason: String| ConfigError::Toml {
        path: shown.clone(),
        reason,
    };
    let file: FileConfig = toml::from_str(&text).map_err(|e| toml_err(e.message().to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let num = |s: &Scalar| parse_number(&s.text());
    let guest = match file.guest {
        Some(g) => Some(GuestSpec {
            path: dir.join(g.path),
            mode: g.mode.as_deref().map(parse_mode).transpose()?,
            load_addr: g.load_addr.as_ref().map(num).transpose()?,
            entry: g.entry.as_ref().map(num).transpose()?,
        }),
        None => None,
    };
    let serial = match file.serial.as_deref() {
        None => None,
        Some(s) => Some(
            SerialBackend::parse(s)
                .ok_or_else(|| toml_err(format!("serial must be native or none, not `{s}`")))?,
        ),
    };
    let mut policies = Vec::new();
    for p in file.policy {
        let mut config = Vec::new();
        for (key, value) in p.config {
            let value: ConfigValue = value.try_into().map_err(|_| {
                toml_err(format!(
                    "policy config `{key}` must be a string, number, boolean or a list of them"
                ))
            })?;
            match value {
                ConfigValue::One(s) => config.push((key.clone(), s.text())),
                ConfigValue::Many(list) => {
                    config.extend(list.iter().map(|s| (key.clone(), s.text())))
                }
            }
        }
        let mut sandbox = Sandbox::default();
        for (key, value) in p.sandbox {
            let value: ConfigValue = value.try_into().map_err(|_| {
                toml_err(format!(
                    "sandbox setting `{key}` must be a string, number or a list of them"
                ))
            })?;
            let values = match value {
                ConfigValue::One(s) => vec![s.text()],
                ConfigValue::Many(list) => list.iter().map(Scalar::text).collect(),
            };
            for v in values {
                sandbox.set(&key, &v)?;
            }
        }
        policies.push(PolicySpec {
            path: dir.join(p.path),
            config,
            sandbox,
        });
    }
    Ok(FileSettings {
        guest,
        vcpus: file.vcpus,
        mem_bytes: file
            .mem
            .as_ref()
            .map(|m| parse_size(&m.text()))
            .transpose()?,
        serial,
        irqchip: file.irqchip,
        policies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_spec_splits_path_and_pairs() {
        let s = PolicySpec::parse("dir/msr-guard.wasm:allow=0x174,watch=0x170-0x17f").unwrap();
        assert_eq!(s.path, PathBuf::from("dir/msr-guard.wasm"));
        assert_eq!(s.config.len(), 2);
        assert_eq!(s.config[1], ("watch".into(), "0x170-0x17f".into()));
        assert_eq!(PolicySpec::parse("p.wasm").unwrap().config, vec![]);
        assert!(PolicySpec::parse("p.wasm:novalue").is_err());
        assert!(PolicySpec::parse("p.wasm:=1").is_err());
        let s = PolicySpec::parse("p.wasm:@on-fault=stop,port=1,@grant=stop-vm").unwrap();
        assert_eq!(s.config, vec![("port".into(), "1".into())]);
        assert_eq!(s.sandbox.on_fault, crate::policies::sandbox::OnFault::Stop);
        assert!(s.sandbox.grants.stop_vm);
        assert!(PolicySpec::parse("p.wasm:@bogus=1").is_err());
    }

    #[test]
    fn sizes_and_numbers() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(parse_number("0x8000").unwrap(), 0x8000);
        assert_eq!(parse_number("32768").unwrap(), 0x8000);
        assert!(parse_number("0xzz").is_err());
    }

    #[test]
    fn dma_windows_parse_and_check() {
        assert_eq!(
            parse_dma_window("0x100000+1M").unwrap(),
            Window::new(0x10_0000, 0x10_0000)
        );
        assert_eq!(
            parse_dma_window("4096+0x2000").unwrap(),
            Window::new(0x1000, 0x2000)
        );
        for bad in ["0x1000", "+0x1000", "0x1000+", "x+1", "1+lots"] {
            assert_eq!(
                parse_dma_window(bad),
                Err(ConfigError::DmaWindowSyntax(bad.into()))
            );
        }
        let w = parse_dma_window("0x1800+4K").unwrap();
        let e = ConfigError::from(DmaDomain::new(&[w]).unwrap_err());
        assert_eq!(
            e.to_string(),
            "--dma-window: DMA window 0x1800+0x1000 is not aligned to 4 KiB pages"
        );
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = VmConfig::new(GuestSpec {
            path: "g".into(),
            mode: None,
            load_addr: None,
            entry: None,
        });
        assert!(c.check().is_ok());
        c.vcpus = 0;
        assert_eq!(c.check(), Err(ConfigError::VcpuRange(0)));
        c.vcpus = 1;
        c.mem_bytes = 4 << 30;
        assert!(c.check().is_err());
    }

    #[test]
    fn toml_file_resolves_paths_and_lists() {
        let dir = std::env::temp_dir().join(format!("wv-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.toml");
        std::fs::write(
            &file,
            r#"
vcpus = 2
mem = "32M"
serial = "native"
[guest]
path = "guests/devices.bin"
mode = "protected"
load-addr = 0x8000
[[policy]]
path = "policies/msr-guard.wasm"
config = { allow = [0x174, "0x175"], log = "all" }
sandbox = { deadline = "5ms", grant = ["stop-vm", "set-registers"], on-fault = "gp" }
"#,
        )
        .unwrap();
        let s = read_config_file(&file).unwrap();
        assert_eq!(s.vcpus, Some(2));
        assert_eq!(s.mem_bytes, Some(32 << 20));
        assert_eq!(s.serial, Some(SerialBackend::Native));
        let g = s.guest.unwrap();
        assert_eq!(g.path, dir.join("guests/devices.bin"));
        assert_eq!(g.load_addr, Some(0x8000));
        let p = &s.policies[0];
        assert_eq!(p.path, dir.join("policies/msr-guard.wasm"));
        assert!(p.config.contains(&("allow".into(), "372".into())));
        assert!(p.config.contains(&("allow".into(), "0x175".into())));
        assert!(p.sandbox.grants.stop_vm && p.sandbox.grants.set_registers);
        assert_eq!(p.sandbox.on_fault, crate::policies::sandbox::OnFault::Gp);
        std::fs::write(&file, "bogus = 1").unwrap();
        assert!(matches!(
            read_config_file(&file),
            Err(ConfigError::Toml { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

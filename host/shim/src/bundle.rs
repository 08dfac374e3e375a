//! An OCI bundle (config.json + rootfs) mapped to a `wasmvisor run`
//! command line. Everything here is pure: it reads the spec and the
//! rootfs, and checks them, but runs nothing, so that `create` can refuse
//! a bad bundle with one line before any VM exists (docs/containerd.md).
//!
//! | from the bundle | to wasmvisor |
//! |---|---|
//! | `io.wasmvisor.guest=PATH` (or, without it and without a kernel, `process.args[0]`) | `--guest ROOTFS/PATH` |
//! | `io.wasmvisor.kernel=PATH`, `io.wasmvisor.initrd=PATH`, `io.wasmvisor.cmdline=TEXT` | `--kernel`, `--initrd`, `--cmdline` |
//! | `io.wasmvisor.policy.N=PATH[:k=v,...]`, N = 0, 1, ... | `--policy ROOTFS/PATH[:k=v,...]`, in N order |
//! | `io.wasmvisor.args=FLAGS` | the allowed flags ([`ALLOWED_FLAGS`]) |
//! | `linux.resources.memory.limit` | `--mem` (default 64M) |
//! | `linux.resources.cpu` quota/period, else cpus | `--vcpus` (default 1) |
//!
//! Every PATH is resolved inside the rootfs ([`resolve_in_rootfs`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The annotation prefix this runtime owns; an unknown key under it is an
/// error, so that a typo does not go unnoticed.
pub const PREFIX: &str = "io.wasmvisor.";
pub const GUEST: &str = "io.wasmvisor.guest";
pub const KERNEL: &str = "io.wasmvisor.kernel";
pub const INITRD: &str = "io.wasmvisor.initrd";
pub const CMDLINE: &str = "io.wasmvisor.cmdline";
pub const POLICY: &str = "io.wasmvisor.policy.";
pub const ARGS: &str = "io.wasmvisor.args";

/// What containerd's CRI plugin calls a container: `sandbox` for a pod's
/// placeholder, `container` for the others.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// Guest RAM without a memory limit.
pub const DEFAULT_MEM_MIB: u64 = 64;
/// wasmvisor's `--mem` range: 1M to 3G.
pub const MIN_MEM_MIB: u64 = 1;
pub const MAX_MEM_MIB: u64 = 3 * 1024;
/// wasmvisor's `--vcpus` range: 1 to 16.
pub const MAX_VCPUS: u64 = 16;
/// How many symbolic links one path may go through.
const MAX_LINKS: usize = 40;

/// Flags `io.wasmvisor.args` may carry, and whether each takes a value.
/// Everything else is refused: the guest, policies, memory and vCPUs have
/// their own annotations and resources, and the flags that name host
/// files or sockets (`--control`, `--policy-cache`, `--events`,
/// `--record`, `--config`, `--kernel-profile`, `--device vfio...`) belong
/// to the node, not to the container.
pub const ALLOWED_FLAGS: &[(&str, bool)] = &[
    ("--serial", true),
    ("--device", true),
    ("--mode", true),
    ("--load-addr", true),
    ("--entry", true),
    ("--irqchip", false),
    ("--dma-window", true),
    ("--policy-deadline-ms", true),
    ("--stats", false),
];

/// A bundle that cannot run, in one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BundleError(pub String);

fn err(msg: impl Into<String>) -> BundleError {
    BundleError(msg.into())
}

/// The parts of an OCI runtime spec the shim reads; the rest is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Root {
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Process {
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub resources: Option<Resources>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Memory {
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Cpu {
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub period: Option<u64>,
    #[serde(default)]
    pub cpus: Option<String>,
}

impl Spec {
    /// Reads `BUNDLE/config.json`.
    pub fn read(bundle: &Path) -> Result<Spec, BundleError> {
        let path = bundle.join("config.json");
        let text = fs::read_to_string(&path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))
    }

    /// Whether this is a Kubernetes pod's sandbox ("pause") container,
    /// as containerd's CRI plugin marks it.
    pub fn is_sandbox(&self) -> bool {
        self.annotations
            .as_ref()
            .and_then(|a| a.get(CRI_CONTAINER_TYPE))
            .is_some_and(|t| t == "sandbox")
    }

    /// The rootfs directory: `root.path`, relative to the bundle unless
    /// absolute.
    pub fn rootfs(&self, bundle: &Path) -> Result<PathBuf, BundleError> {
        let path = self.root.as_ref().map(|r| r.path.as_str()).unwrap_or("");
        let path = if path.is_empty() { "rootfs" } else { path };
        let dir = bundle.join(path);
        if !dir.is_dir() {
            return Err(err(format!("rootfs {} is not a directory", dir.display())));
        }
        Ok(dir)
    }
}

/// What boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    Guest(PathBuf),
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
    },
}

/// The VM a bundle describes, with every path resolved on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub boot: Boot,
    pub mem_mib: u64,
    pub vcpus: u64,
    /// `--policy` arguments, in load order.
    pub policies: Vec<String>,
    /// The checked `io.wasmvisor.args` flags.
    pub extra: Vec<String>,
    /// What a reader of containerd's log should know (a limit that was
    /// capped).
    pub notes: Vec<String>,
}

impl Plan {
    /// Maps `spec`, whose rootfs is `rootfs`, to a VM, or says in one line
    /// why it cannot run.
    pub fn from_spec(spec: &Spec, rootfs: &Path) -> Result<Plan, BundleError> {
        let empty = BTreeMap::new();
        let ann = spec.annotations.as_ref().unwrap_or(&empty);
        for key in ann.keys() {
            let known = [GUEST, KERNEL, INITRD, CMDLINE, ARGS].contains(&key.as_str())
                || key.starts_with(POLICY);
            if key.starts_with(PREFIX) && !known {
                return Err(err(format!(
                    "unknown annotation {key}: wasmvisor reads {GUEST}, {KERNEL}, {INITRD}, \
                     {CMDLINE}, {POLICY}N and {ARGS}"
                )));
            }
        }
        let mut notes = Vec::new();
        let boot = boot(ann, spec, rootfs)?;
        let policies = policies(ann, rootfs)?;
        let extra = match ann.get(ARGS) {
            Some(a) => check_args(a, matches!(boot, Boot::Kernel { .. }))?,
            None => Vec::new(),
        };
        let resources = spec.linux.as_ref().and_then(|l| l.resources.as_ref());
        let mem_mib = mem_mib(resources.and_then(|r| r.memory.as_ref()), &mut notes)?;
        let vcpus = vcpus(resources.and_then(|r| r.cpu.as_ref()), &mut notes)?;
        Ok(Plan {
            boot,
            mem_mib,
            vcpus,
            policies,
            extra,
            notes,
        })
    }

    /// The `wasmvisor run` arguments: the VM, then the node's options (the
    /// control socket, relative to the directory wasmvisor runs in, and
    /// the policy cache).
    pub fn args(&self, control: &Path, policy_cache: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into()];
        match &self.boot {
            Boot::Guest(g) => {
                a.push("--guest".into());
                a.push(g.into());
            }
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                a.push("--kernel".into());
                a.push(kernel.into());
                if let Some(i) = initrd {
                    a.push("--initrd".into());
                    a.push(i.into());
                }
                if let Some(c) = cmdline {
                    a.push("--cmdline".into());
                    a.push(c.into());
                }
            }
        }
        a.push("--mem".into());
        a.push(format!("{}M", self.mem_mib).into());
        a.push("--vcpus".into());
        a.push(self.vcpus.to_string().into());
        for p in &self.policies {
            a.push("--policy".into());
            a.push(p.into());
        }
        a.extend(self.extra.iter().map(OsString::from));
        a.push("--control".into());
        a.push(control.into());
        a.push("--policy-cache".into());
        a.push(policy_cache.into());
        a
    }
}

fn boot(ann: &BTreeMap<String, String>, spec: &Spec, rootfs: &Path) -> Result<Boot, BundleError> {
    let file = |what: &str, p: &str| -> Result<PathBuf, BundleError> {
        let path = resolve_in_rootfs(rootfs, p).map_err(|e| err(format!("{what} {p}: {e}")))?;
        if !path.is_file() {
            return Err(err(format!("{what} {p}: not a regular file in the rootfs")));
        }
        Ok(path)
    };
    match (ann.get(GUEST), ann.get(KERNEL)) {
        (Some(_), Some(_)) => Err(err(format!("{GUEST} and {KERNEL} exclude each other"))),
        (Some(g), None) => {
            for k in [INITRD, CMDLINE] {
                if ann.contains_key(k) {
                    return Err(err(format!("{k} needs {KERNEL}, not {GUEST}")));
                }
            }
            Ok(Boot::Guest(file("guest image", g)?))
        }
        (None, Some(k)) => Ok(Boot::Kernel {
            kernel: file("kernel", k)?,
            initrd: ann.get(INITRD).map(|i| file("initrd", i)).transpose()?,
            cmdline: ann.get(CMDLINE).cloned(),
        }),
        (None, None) => {
            for k in [INITRD, CMDLINE] {
                if ann.contains_key(k) {
                    return Err(err(format!("{k} needs {KERNEL}")));
                }
            }
            let args = spec
                .process
                .as_ref()
                .and_then(|p| p.args.as_deref())
                .unwrap_or_default();
            match args {
                [] => Err(err(format!(
                    "no guest: set {GUEST} (or {KERNEL}), or give the guest image as the \
                     process's first argument"
                ))),
                [g] => Ok(Boot::Guest(file("guest image", g)?)),
                [g, rest @ ..] => Err(err(format!(
                    "process args {g:?} {rest:?}: wasmvisor takes the guest image alone as \
                     the process's arguments; use {ARGS} for wasmvisor flags"
                ))),
            }
        }
    }
}

/// `io.wasmvisor.policy.N` in N order, numbered from 0 without gaps.
fn policies(ann: &BTreeMap<String, String>, rootfs: &Path) -> Result<Vec<String>, BundleError> {
    let mut numbered = BTreeMap::new();
    for (key, spec) in ann {
        let Some(n) = key.strip_prefix(POLICY) else {
            continue;
        };
        let index: usize = match n.parse() {
            Ok(i) if n == "0" || !n.starts_with('0') => i,
            _ => {
                return Err(err(format!(
                    "annotation {key}: the policy index must be a number (0, 1, ...)"
                )))
            }
        };
        numbered.insert(index, (key, spec));
    }
    let mut out = Vec::new();
    for (expected, (index, (key, spec))) in numbered.into_iter().enumerate() {
        if index != expected {
            return Err(err(format!(
                "annotation {key}: policies are numbered from 0 without gaps, and \
                 {POLICY}{expected} is missing"
            )));
        }
        out.push(policy(key, spec, rootfs)?);
    }
    Ok(out)
}

/// One policy annotation, `PATH[:key=value,...]` (the path ends at the
/// first `.wasm:`, as for `wasmvisor run --policy`), with PATH resolved in
/// the rootfs and checked to be a Wasm file.
fn policy(key: &str, spec: &str, rootfs: &Path) -> Result<String, BundleError> {
    let (path, rest) = match spec.find(".wasm:") {
        Some(i) => spec.split_at(i + 5),
        None => (spec, ""),
    };
    let bad = |why: String| err(format!("annotation {key}={spec}: {why}"));
    if path.is_empty() {
        return Err(bad("no policy path".into()));
    }
    let pairs = rest.strip_prefix(':').unwrap_or(rest);
    for pair in pairs.split(',').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, _)) if !k.is_empty() && k != "@" => {}
            _ => {
                return Err(bad(format!(
                    "`{pair}` is not key=value (the form is PATH.wasm:key=value,@grant=...)"
                )))
            }
        }
    }
    let host = resolve_in_rootfs(rootfs, path).map_err(|e| bad(e.0))?;
    let mut magic = [0u8; 4];
    let read = fs::File::open(&host).and_then(|mut f| {
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        std::io::Read::read_exact(&mut f, &mut magic)
    });
    match read {
        Ok(()) if &magic == b"\0asm" => {}
        Ok(()) => return Err(bad(format!("{path} is not a WebAssembly file"))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(bad(format!("{path} is not a WebAssembly file")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!("{path} is not in the rootfs")))
        }
        Err(e) => return Err(bad(format!("{path}: {e}"))),
    }
    Ok(format!("{}{rest}", host.display()))
}

/// `io.wasmvisor.args`: whitespace-separated flags from [`ALLOWED_FLAGS`],
/// as `--flag value` or `--flag=value`.
fn check_args(text: &str, kernel: bool) -> Result<Vec<String>, BundleError> {
    let mut out = Vec::new();
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (word, None),
        };
        let Some(&(_, takes_value)) = ALLOWED_FLAGS.iter().find(|(f, _)| *f == flag) else {
            let allowed: Vec<&str> = ALLOWED_FLAGS.iter().map(|(f, _)| *f).collect();
            return Err(err(format!(
                "{ARGS}: `{word}` is not allowed here (allowed: {})",
                allowed.join(" ")
            )));
        };
        if kernel && ["--mode", "--load-addr", "--entry"].contains(&flag) {
            return Err(err(format!(
                "{ARGS}: {flag} is for a guest image, not a kernel"
            )));
        }
        out.push(flag.to_string());
        if !takes_value {
            if inline.is_some() {
                return Err(err(format!("{ARGS}: {flag} takes no value")));
            }
            continue;
        }
        let value = match inline {
            Some(v) => v.to_string(),
            None => words
                .next()
                .ok_or_else(|| err(format!("{ARGS}: {flag} needs a value")))?
                .to_string(),
        };
        if flag == "--device" {
            let kind = value.split('=').next().unwrap_or("");
            if !["debug-exit", "test"].contains(&kind) {
                return Err(err(format!(
                    "{ARGS}: --device {value} is not allowed here (debug-exit[=PORT] and test are)"
                )));
            }
        }
        out.push(value);
    }
    Ok(out)
}

fn mem_mib(memory: Option<&Memory>, notes: &mut Vec<String>) -> Result<u64, BundleError> {
    let limit = match memory.and_then(|m| m.limit) {
        Some(l) if l > 0 => l as u64,
        _ => return Ok(DEFAULT_MEM_MIB),
    };
    let mib = limit >> 20;
    if mib < MIN_MEM_MIB {
        return Err(err(format!(
            "memory limit {limit} bytes is below the VM's 1M minimum"
        )));
    }
    if mib > MAX_MEM_MIB {
        notes.push(format!(
            "memory limit {limit} bytes is above wasmvisor's 3G: the VM gets 3G"
        ));
        return Ok(MAX_MEM_MIB);
    }
    Ok(mib)
}

fn vcpus(cpu: Option<&Cpu>, notes: &mut Vec<String>) -> Result<u64, BundleError> {
    let Some(cpu) = cpu else { return Ok(1) };
    let n = match (cpu.quota, cpu.period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64).div_ceil(p),
        _ => match cpu.cpus.as_deref().map(str::trim) {
            Some(set) if !set.is_empty() => count_cpuset(set)?,
            _ => 1,
        },
    };
    if n > MAX_VCPUS {
        notes.push(format!(
            "the CPU limit allows {n} CPUs; wasmvisor runs at most {MAX_VCPUS} vCPUs"
        ));
        return Ok(MAX_VCPUS);
    }
    Ok(n.max(1))
}

/// The number of CPUs in a cpuset list such as `0-3,5`.
fn count_cpuset(set: &str) -> Result<u64, BundleError> {
    let bad = || {
        err(format!(
            "linux.resources.cpu.cpus `{set}` is not a CPU list"
        ))
    };
    let mut n = 0u64;
    for part in set.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b.trim().parse().map_err(|_| bad())?;
        if b < a {
            return Err(bad());
        }
        n += b - a + 1;
    }
    Ok(n)
}

/// Resolves `path` inside `rootfs` as if the rootfs were `/`: a leading
/// `/` is dropped, a relative symbolic link resolves from its directory
/// and an absolute one from the rootfs. A `..` that would climb above the
/// rootfs, in the path or in a link, is refused, so the result never lies
/// outside `rootfs`. The final file need not exist.
pub fn resolve_in_rootfs(rootfs: &Path, path: &str) -> Result<PathBuf, BundleError> {
    if path.is_empty() {
        return Err(err("empty path"));
    }
    // The components still to walk, last first.
    let mut todo: Vec<OsString> = components(Path::new(path))?;
    todo.reverse();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            if done.pop().is_none() {
                return Err(err(format!("{path} leads out of the rootfs")));
            }
            continue;
        }
        let here: PathBuf = done.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c));
        let next = here.join(&c);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(err(format!("{path}: too many symbolic links")));
                }
                let target = fs::read_link(&next)
                    .map_err(|e| err(format!("{path}: {}: {e}", next.display())))?;
                if target.is_absolute() {
                    done.clear();
                }
                let mut more = components(&target)?;
                more.reverse();
                todo.extend(more);
            }
            _ => done.push(c),
        }
    }
    Ok(done.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c)))
}

/// The normal and `..` components of `p` (root and `.` dropped).
fn components(p: &Path) -> Result<Vec<OsString>, BundleError> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => out.push("..".into()),
            Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => return Err(err(format!("{}: not a Unix path", p.display()))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch rootfs with a guest and a policy.
    fn rootfs(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wasmvisor-shim-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("policies")).unwrap();
        fs::write(d.join("hello.elf"), b"\x7fELF").unwrap();
        fs::write(d.join("policies/serial.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
        fs::write(d.join("policies/text.wasm"), b"not wasm").unwrap();
        d
    }

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn plan(root: &Path, json: serde_json::Value) -> Result<Plan, BundleError> {
        Plan::from_spec(&spec(json), root)
    }

    #[test]
    fn args0_is_the_guest_and_resources_map_to_mem_and_vcpus() {
        let r = rootfs("args0");
        let p = plan(
            &r,
            serde_json::json!({
                "process": {"args": ["/hello.elf"]},
                "linux": {"resources": {"memory": {"limit": 32 << 20},
                                        "cpu": {"quota": 150000, "period": 100000}}},
                "annotations": {"io.wasmvisor.policy.0": "policies/serial.wasm:@irq=4",
                                "io.wasmvisor.args": "--serial none --device=debug-exit=0x501"}
            }),
        )
        .unwrap();
        assert_eq!(p.boot, Boot::Guest(r.join("hello.elf")));
        assert_eq!((p.mem_mib, p.vcpus), (32, 2));
        assert_eq!(
            p.policies,
            [format!(
                "{}:@irq=4",
                r.join("policies/serial.wasm").display()
            )]
        );
        assert_eq!(
            p.extra,
            ["--serial", "none", "--device", "debug-exit=0x501"]
        );
        let args = p.args(Path::new("control.sock"), Path::new("/cache"));
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args[0..2], ["run", "--guest"]);
        assert!(args.ends_with(&["--control", "control.sock", "--policy-cache", "/cache"]));
    }

    #[test]
    fn defaults_are_64m_and_one_vcpu() {
        let r = rootfs("defaults");
        let p = plan(
            &r,
            serde_json::json!({"annotations": {"io.wasmvisor.guest": "hello.elf"},
                               "process": {"args": ["sh", "-c", "ignored"]},
                               "linux": {"resources": {"memory": {"limit": -1}}}}),
        )
        .unwrap();
        assert_eq!((p.mem_mib, p.vcpus), (64, 1));
        assert!(p.policies.is_empty());
    }

    #[test]
    fn cpusets_count_and_large_limits_are_capped() {
        let mut notes = Vec::new();
        let cpu = |cpus: &str| Cpu {
            cpus: Some(cpus.into()),
            ..Cpu::default()
        };
        assert_eq!(vcpus(Some(&cpu("0-3,5")), &mut notes), Ok(5));
        assert_eq!(vcpus(Some(&cpu("0-63")), &mut notes), Ok(16));
        assert!(vcpus(Some(&cpu("3-1")), &mut notes).is_err());
        let mem = |l| Memory { limit: Some(l) };
        assert_eq!(mem_mib(Some(&mem(8 << 30)), &mut notes), Ok(3072));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(mem_mib(Some(&mem(4096)), &mut notes).is_err());
    }

    #[test]
    fn bad_bundles_say_why_in_one_line() {
        let r = rootfs("bad");
        let cases = [
            (serde_json::json!({}), "no guest"),
            (
                serde_json::json!({"process": {"args": ["/missing.elf"]}}),
                "guest image /missing.elf: not a regular file",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.guest": "hello.elf",
                                                   "io.wasmvisor.policy.0": "policies/serial.wasm:irq"}}),
                "`irq` is not key=value",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.guest": "hello.elf",
                                                   "io.wasmvisor.policy.0": "policies/text.wasm"}}),
                "is not a WebAssembly file",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.guest": "hello.elf",
                                                   "io.wasmvisor.policy.1": "policies/serial.wasm"}}),
                "io.wasmvisor.policy.0 is missing",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.guest": "hello.elf",
                                                   "io.wasmvisor.policy.x": "policies/serial.wasm"}}),
                "must be a number",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.guest": "../hello.elf"}}),
                "leads out of the rootfs",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.guest": "hello.elf",
                                                   "io.wasmvisor.args": "--control /tmp/x"}}),
                "`--control` is not allowed",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.guest": "hello.elf",
                                                   "io.wasmvisor.args": "--device vfio=0000:00:01.0"}}),
                "is not allowed here",
            ),
            (
                serde_json::json!({"annotations": {"io.wasmvisor.gest": "hello.elf"}}),
                "unknown annotation io.wasmvisor.gest",
            ),
        ];
        for (json, needle) in cases {
            let e = plan(&r, json.clone()).unwrap_err().0;
            assert!(e.contains(needle), "{json}: `{e}` lacks `{needle}`");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_pod_sandbox_is_recognised() {
        let sandbox = spec(serde_json::json!({
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"}}));
        assert!(sandbox.is_sandbox());
        let app = spec(serde_json::json!({
            "annotations": {"io.kubernetes.cri.container-type": "container"}}));
        assert!(!app.is_sandbox());
        assert!(!spec(serde_json::json!({})).is_sandbox());
    }

    #[test]
    fn links_resolve_inside_the_rootfs() {
        let r = rootfs("links");
        fs::create_dir_all(r.join("lib")).unwrap();
        symlink("/policies", r.join("lib/abs")).unwrap();
        symlink("../policies/serial.wasm", r.join("lib/rel.wasm")).unwrap();
        symlink("../../../../../../etc/passwd", r.join("lib/escape")).unwrap();
        symlink("/etc/passwd", r.join("lib/host")).unwrap();
        assert_eq!(
            resolve_in_rootfs(&r, "lib/abs/serial.wasm").unwrap(),
            r.join("policies/serial.wasm")
        );
        assert_eq!(
            resolve_in_rootfs(&r, "/lib/rel.wasm").unwrap(),
            r.join("policies/serial.wasm")
        );
        assert!(resolve_in_rootfs(&r, "lib/escape")
            .unwrap_err()
            .0
            .contains("out of the rootfs"));
        // An absolute link means the rootfs's /etc/passwd, never the host's.
        assert_eq!(
            resolve_in_rootfs(&r, "lib/host").unwrap(),
            r.join("etc/passwd")
        );
        symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in_rootfs(&r, "loop").is_err());
    }
}

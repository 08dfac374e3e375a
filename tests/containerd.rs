//! containerd, end to end: a private containerd (temporary root, state
//! and socket, CRI off) runs wasmvisor VMs through
//! `containerd-shim-wasmvisor-v1` (host/shim), driven with `ctr` as a user
//! would (docs/containerd.md).
//!
//! One daemon serves every case: it takes a few seconds to start, and a
//! guard stops it, and cleans up what the cases left, even when a case
//! fails. Debian's `containerd` (1.6, with `ctr`) is installed if it is
//! missing; the test fails when containerd cannot be installed or
//! started.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmvisor_tests::{assert_contains, assets, bin, guest, policy, require_kvm, root};

const RUNTIME: &str = "io.containerd.wasmvisor.v1";
/// How long one `ctr` or `wasmvisor` command may take: every case ends in
/// well under a second here, so this only stops a hung task from hanging
/// the test run.
const LIMIT: Duration = Duration::from_secs(60);
/// A container ID shaped like Kubernetes' (64 hex digits): its bundle
/// path, and so the VM's control socket path, is longer than a socket
/// address can hold.
const TICKER: &str = "7a1c0f3e9b2d4c5a8e6f1b3d5c7a9e0f2b4d6c8a0e1f3b5d7c9a2e4f6b8d0c1a";

/// What a command showed.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end, failing the test after [`LIMIT`].
fn run(mut cmd: Command) -> Out {
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + LIMIT;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{line} hung for {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Installs Debian's containerd (which ships `ctr`) when either is
/// missing.
fn ensure_containerd() {
    let have = |b: &str| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("containerd") && have("ctr") {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "containerd"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let mut out = install();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        let _ = Command::new("apt-get").args(["update", "-q"]).output();
        out = install();
    }
    match out {
        Ok(o) if o.status.success() && have("containerd") && have("ctr") => {}
        Ok(o) => panic!(
            "containerd is missing and `apt-get install -y containerd` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("containerd is missing and apt-get could not run: {e}"),
    }
}

/// The private containerd, stopped (with everything the cases left) when
/// dropped.
struct Containerd {
    daemon: Option<Child>,
    /// `ctr events`, recording every event the shims publish.
    events: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        // Short: the socket paths under it must fit in a socket address.
        let dir = std::env::temp_dir().join(format!("wv-ctrd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{d}/root\"\n\
                 state = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
                d = dir.display(),
                s = socket.display()
            ),
        )
        .unwrap();
        // containerd finds the shim on its PATH; the shim finds wasmvisor
        // next to itself.
        let release = root().join("target/release");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![release];
        paths.extend(std::env::split_paths(&path));
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("WASMVISOR_CACHE_DIR", dir.join("policy-cache"))
            .env_remove("WASMVISOR_BIN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("containerd does not start: {e}"));
        let mut d = Containerd {
            daemon: Some(daemon),
            events: None,
            dir,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = d.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({status}) at start: {}", d.log());
            }
            if d.socket.exists() && run(d.ctr(&["version"])).code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not serve {} within 30 s: {}",
                d.socket.display(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut events = d.ctr(&["events"]);
        events
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.dir.join("events.txt")).unwrap())
            .stderr(Stdio::null());
        d.events = Some(events.spawn().expect("ctr events starts"));
        d
    }

    /// `ctr --address SOCKET ARGS...`
    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket).args(args);
        c
    }

    /// `ctr run --runtime io.containerd.wasmvisor.v1 FLAGS... --rootfs
    /// ROOTFS ID [ARGS...]`.
    fn ctr_run(&self, flags: &[&str], id: &str, args: &[&str]) -> Out {
        let rootfs = self.rootfs();
        let mut c = self.ctr(&["run", "--runtime", RUNTIME]);
        c.args(flags)
            .arg("--rootfs")
            .arg(&rootfs)
            .arg(id)
            .args(args);
        run(c)
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.dir.join("events.txt")).unwrap_or_default()
    }

    /// The bundle (state) directory containerd gives task `id`: the shim's
    /// working directory, where the VM's control socket lives.
    fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task/default")
            .join(id)
    }

    /// Pids of processes whose command line has every one of `needles`.
    fn processes(needles: &[&str]) -> Vec<u32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if needles.iter().all(|n| cmdline.contains(n)) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers a failed case may have left.
        let ls = run(self.ctr(&["container", "ls", "-q"]));
        for id in ls.stdout.split_whitespace() {
            let _ = run(self.ctr(&["task", "kill", "-s", "SIGKILL", id]));
            std::thread::sleep(Duration::from_millis(200));
            let _ = run(self.ctr(&["task", "delete", "-f", id]));
            let _ = run(self.ctr(&["container", "delete", id]));
        }
        for child in [self.events.take(), self.daemon.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims of this daemon, and their VMs, if any outlived it: each
        // names this daemon's socket, or lies in its rootfs.
        let socket = self.socket.display().to_string();
        let rootfs = self.rootfs().display().to_string();
        let leftovers: Vec<u32> = Self::processes(&["containerd-shim-wasmvisor-v1", &socket])
            .into_iter()
            .chain(Self::processes(&["wasmvisor", "run", &rootfs]))
            .collect();
        for pid in leftovers {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `done`, failing with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rootfs every case runs from: guests and policies, a file that is
/// not Wasm and a component of another world.
fn make_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    for g in ["hello.elf", "ticker.bin"] {
        std::fs::copy(guest(g), dir.join(g)).unwrap();
    }
    for p in ["serial", "counter"] {
        std::fs::copy(policy(p), dir.join(format!("policies/{p}.wasm"))).unwrap();
    }
    std::fs::copy(
        assets().join("fixtures/other-world.wasm"),
        dir.join("policies/other-world.wasm"),
    )
    .unwrap();
    std::fs::write(dir.join("policies/text.wasm"), "not a component\n").unwrap();
}

/// The hello guest under the serial policy, both from the rootfs: its
/// console line on ctr's stdout, exit status 0, memory from the limit,
/// and the policy compiled into the node's cache.
fn hello_runs_to_completion(d: &Containerd) {
    let r = d.ctr_run(
        &[
            "--rm",
            "--memory-limit",
            "33554432",
            "--annotation",
            "io.wasmvisor.policy.0=policies/serial.wasm",
        ],
        "hello",
        &["/hello.elf"],
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n", "{r:?}");
    assert_contains(&r.stderr, &["wasmvisor: all vCPUs halted"]);
    let rootfs = d.rootfs().display().to_string();
    assert_contains(
        &d.log(),
        &[format!(
            "run --guest {rootfs}/hello.elf --mem 32M --vcpus 1 --policy {rootfs}/policies/serial.wasm --control control.sock --policy-cache {}",
            d.dir.join("policy-cache").display()
        )],
    );
    let cached: Vec<_> = std::fs::read_dir(d.dir.join("policy-cache"))
        .expect("the node's policy cache exists")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "one precompiled policy: {cached:?}");
    assert!(!d.bundle("hello").exists(), "the bundle is gone after --rm");
}

/// The ticker guest, detached, under the counter policy: RUNNING in `ctr
/// task ls`, its policies listed and swapped through the control socket
/// in its bundle, then killed (SIGTERM: exit status 143, published as
/// TaskExit) and deleted, leaving no process, socket or state.
fn ticker_runs_detached_and_is_controlled(d: &Containerd) {
    let r = d.ctr_run(
        &[
            "-d",
            "--annotation",
            "io.wasmvisor.guest=ticker.bin",
            "--annotation",
            "io.wasmvisor.policy.0=policies/counter.wasm:@grant=stop-vm",
            "--annotation",
            "io.wasmvisor.args=--serial none",
        ],
        TICKER,
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    let bundle = d.bundle(TICKER);
    let control = bundle.join("control.sock");
    assert!(
        control.as_os_str().len() > 107,
        "the socket path is meant to be too long for a socket address"
    );
    wait_until(Duration::from_secs(20), "control socket", || {
        control.exists()
    });

    let ls = run(d.ctr(&["task", "ls"]));
    let row = ls
        .stdout
        .lines()
        .find(|l| l.starts_with(TICKER))
        .unwrap_or_else(|| panic!("no {TICKER} in {ls:?}"));
    assert_contains(row, &["RUNNING"]);
    let pid: u32 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    let wasmvisor = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args);
        run(c)
    };
    let ctl = control.to_str().unwrap();
    let list = wasmvisor(&["policy", "list", "--control", ctl]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_contains(&list.stdout, &["generation 1", "counter"]);
    // The same socket through the VM's working directory, a short path.
    let via_cwd = format!("/proc/{pid}/cwd/control.sock");
    let list = wasmvisor(&["policy", "list", "--control", &via_cwd]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_contains(&list.stdout, &["counter"]);
    let counter = d.rootfs().join("policies/counter.wasm");
    let swap = wasmvisor(&[
        "policy",
        "swap",
        "--control",
        ctl,
        "counter",
        &format!("{}:generation=2,@grant=stop-vm", counter.display()),
    ]);
    assert_eq!(swap.code, 0, "{swap:?}");
    // The node's cache already held the counter: the shim's first load
    // compiled it there.
    assert_contains(
        &swap.stdout,
        &["generation 2: counter active on 1 vCPU(s)", "cache hit"],
    );

    let kill = run(d.ctr(&["task", "kill", TICKER]));
    assert_eq!(kill.code, 0, "{kill:?}");
    wait_until(Duration::from_secs(20), "STOPPED task", || {
        run(d.ctr(&["task", "ls"]))
            .stdout
            .lines()
            .any(|l| l.starts_with(TICKER) && l.contains("STOPPED"))
    });
    wait_until(Duration::from_secs(10), "TaskExit event", || {
        d.events().lines().any(|l| {
            l.contains("/tasks/exit") && l.contains(TICKER) && l.contains("\"exit_status\":143")
        })
    });
    let del = run(d.ctr(&["task", "delete", TICKER]));
    assert_eq!(del.code, 0, "{del:?}");
    let del = run(d.ctr(&["container", "delete", TICKER]));
    assert_eq!(del.code, 0, "{del:?}");

    wait_until(Duration::from_secs(10), "end of the shim", || {
        Containerd::processes(&["containerd-shim-wasmvisor-v1", TICKER]).is_empty()
    });
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "wasmvisor (pid {pid}) outlived its task"
    );
    assert!(!control.exists(), "the control socket is left");
    assert!(!bundle.exists(), "the bundle is left: {}", bundle.display());
    let ls = run(d.ctr(&["container", "ls", "-q"]));
    assert!(!ls.stdout.contains(TICKER), "{ls:?}");
}

/// Bundles that cannot run fail at once with one readable line: from the
/// shim's checks at create (ctr prints it), or from wasmvisor at start
/// (the task exits 1 and its stderr holds the line); containerd's log has
/// the line too.
fn broken_bundles_fail_with_one_line(d: &Containerd) {
    let at_create = [
        (
            "bad-guest",
            vec![],
            vec!["/missing.elf"],
            "guest image /missing.elf: not a regular file in the rootfs",
        ),
        (
            "bad-escape",
            vec!["io.wasmvisor.guest=../../../hello.elf"],
            vec![],
            "guest image ../../../hello.elf: ../../../hello.elf leads out of the rootfs",
        ),
        (
            "bad-annotation",
            vec!["io.wasmvisor.policy.0=policies/serial.wasm:irq"],
            vec!["/hello.elf"],
            "annotation io.wasmvisor.policy.0=policies/serial.wasm:irq: `irq` is not key=value",
        ),
        (
            "bad-wasm",
            vec!["io.wasmvisor.policy.0=policies/text.wasm"],
            vec!["/hello.elf"],
            "policies/text.wasm is not a WebAssembly file",
        ),
        (
            "bad-flag",
            vec!["io.wasmvisor.args=--events /tmp/x.jsonl"],
            vec!["/hello.elf"],
            "io.wasmvisor.args: `--events` is not allowed here",
        ),
    ];
    for (id, annotations, args, line) in at_create {
        let mut flags = vec!["--rm"];
        for a in &annotations {
            flags.extend(["--annotation", a]);
        }
        let started = Instant::now();
        let r = d.ctr_run(&flags, id, &args);
        assert_ne!(r.code, 0, "{id}: {r:?}");
        let errors: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(errors.len(), 1, "{id}: one line: {r:?}");
        assert!(
            errors[0].starts_with("ctr: failed to create shim task: ") && errors[0].contains(line),
            "{id}: `{line}` not in {r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{id}: slow");
        assert_contains(&d.log(), &[format!("{id}: "), line.to_string()]);
        assert!(!d.bundle(id).exists(), "{id}: bundle left");
    }

    // Only wasmvisor finds this one: a component of another world.
    let started = Instant::now();
    let r = d.ctr_run(
        &[
            "--rm",
            "--annotation",
            "io.wasmvisor.policy.0=policies/other-world.wasm",
        ],
        "bad-world",
        &["/hello.elf"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let line = "wasmvisor: error: cannot start the VM: policy other-world.wasm does not export wasmvisor:policy/handler@0.1.0";
    assert_eq!(r.stderr.trim_end(), line, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "slow");
    assert_contains(&d.log(), &[format!("bad-world: {line}")]);
    let ls = run(d.ctr(&["container", "ls", "-q"]));
    assert!(!ls.stdout.contains("bad-"), "containers left: {ls:?}");
}

/// `sha256:HEX` of `file`, by `sha256sum`.
fn digest(file: &Path) -> String {
    let mut c = Command::new("sha256sum");
    c.arg(file);
    let out = run(c);
    assert_eq!(out.code, 0, "{out:?}");
    format!("sha256:{}", &out.stdout[..64])
}

/// Writes `bytes` as a blob of the OCI layout `layout`; returns its
/// descriptor's digest and size.
fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    let d = digest(&tmp);
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&d[7..])).unwrap();
    (d, bytes.len())
}

/// An image, not a bare rootfs: an OCI archive with one layer (the hello
/// guest and the serial policy, its entrypoint the guest), imported into
/// containerd, whose snapshotter gives the shim the rootfs as mounts to
/// make (as for Kubernetes); the shim mounts them in the bundle and
/// unmounts them at delete.
fn image_rootfs_is_mounted(d: &Containerd) {
    let dir = d.dir.join("image");
    let files = dir.join("files");
    let layout = dir.join("layout");
    std::fs::create_dir_all(files.join("policies")).unwrap();
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::copy(guest("hello.elf"), files.join("hello.elf")).unwrap();
    std::fs::copy(policy("serial"), files.join("policies/serial.wasm")).unwrap();
    let layer = dir.join("layer.tar");
    let mut tar = Command::new("tar");
    tar.args(["--format=ustar", "-C"])
        .arg(&files)
        .arg("-cf")
        .arg(&layer)
        .args(["hello.elf", "policies"]);
    assert_eq!(run(tar).code, 0);
    let (layer_digest, layer_size) = blob(&layout, &std::fs::read(&layer).unwrap());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/hello.elf"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let image = "example.invalid/wasmvisor/hello:test";
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"io.containerd.image.name": image}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("image.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["index.json", "oci-layout", "blobs"]);
    assert_eq!(run(tar).code, 0);
    let import = run(d.ctr(&["images", "import", archive.to_str().unwrap()]));
    assert_eq!(import.code, 0, "{import:?}");

    let mut c = d.ctr(&["run", "--rm", "--runtime", RUNTIME]);
    c.args([
        "--annotation",
        "io.wasmvisor.policy.0=policies/serial.wasm",
        image,
        "himg",
    ]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n", "{r:?}");
    let bundle = d.bundle("himg");
    assert_contains(
        &d.log(),
        &[
            format!("himg: {}", bin().display()),
            format!("run --guest {}/rootfs/hello.elf", bundle.display()),
        ],
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(bundle.to_str().unwrap()),
        "the rootfs is still mounted: {mounts}"
    );
    assert!(!bundle.exists(), "the bundle is left");
    assert_eq!(run(d.ctr(&["images", "rm", image])).code, 0);
}

/// A Kubernetes pod's sandbox container (as containerd's CRI plugin marks
/// it) is a placeholder process, not a VM: it runs until killed.
fn pod_sandbox_is_a_placeholder(d: &Containerd) {
    let r = d.ctr_run(
        &[
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
        ],
        "sandbox",
        &["/pause"],
    );
    assert_eq!(r.code, 0, "{r:?}\n{}", d.log());
    let ls = run(d.ctr(&["task", "ls"]));
    let row = ls
        .stdout
        .lines()
        .find(|l| l.starts_with("sandbox "))
        .unwrap_or_else(|| panic!("no sandbox task in {ls:?}"));
    assert_contains(row, &["RUNNING"]);
    let pid: u32 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert_contains(
        &String::from_utf8_lossy(&cmdline),
        &["containerd-shim-wasmvisor-v1", "--wasmvisor-pause"],
    );
    let kill = run(d.ctr(&["task", "kill", "-s", "SIGKILL", "sandbox"]));
    assert_eq!(kill.code, 0, "{kill:?}");
    wait_until(Duration::from_secs(20), "STOPPED sandbox", || {
        run(d.ctr(&["task", "ls"]))
            .stdout
            .lines()
            .any(|l| l.starts_with("sandbox ") && l.contains("STOPPED"))
    });
    assert_eq!(run(d.ctr(&["task", "delete", "sandbox"])).code, 0);
    assert_eq!(run(d.ctr(&["container", "delete", "sandbox"])).code, 0);
    assert!(!d.bundle("sandbox").exists());
}

/// One case: its name and its body, run against the shared containerd.
type Case = (&'static str, fn(&Containerd));

#[test]
fn containerd_runs_wasmvisor_vms_through_the_shim() {
    require_kvm!();
    let shim = root().join("target/release/containerd-shim-wasmvisor-v1");
    assert!(
        shim.is_file(),
        "{} is missing: run `make build` (cargo build --release --workspace --bins)",
        shim.display()
    );
    bin();
    assets();
    ensure_containerd();
    let started = Instant::now();
    let d = Containerd::start();
    eprintln!("containerd up in {:?}", started.elapsed());
    make_rootfs(&d.rootfs());
    let cases: [Case; 5] = [
        ("hello", hello_runs_to_completion),
        ("image", image_rootfs_is_mounted),
        ("ticker", ticker_runs_detached_and_is_controlled),
        ("broken bundles", broken_bundles_fail_with_one_line),
        ("pod sandbox", pod_sandbox_is_a_placeholder),
    ];
    let mut failed = Vec::new();
    for (name, case) in cases {
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| case(&d))) {
            Ok(()) => eprintln!("case {name}: ok in {:?}", t.elapsed()),
            Err(_) => failed.push(name),
        }
    }
    if !failed.is_empty() {
        eprintln!("--- containerd log:\n{}", d.log());
        eprintln!("--- events:\n{}", d.events());
    }
    drop(d);
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

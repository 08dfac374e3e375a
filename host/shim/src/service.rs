//! The shim's two halves: [`Shim`] (containerd's `start` and `delete`
//! actions, and the serving process's life) and [`TaskService`] (the
//! task API: create, start, state, pids, kill, delete, wait, and the
//! task events published back to containerd).
//!
//! One shim serves one container, whose only process is `wasmvisor run`.
//! The containerd-shim crate reaps every child (the shim is a
//! subreaper) and reports each exit to its monitor, so a VM's end is
//! learnt from a monitor subscription, never from `waitpid`.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::{timestamp, write_address};
use containerd_shim::{Config, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api::{
    self, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ProcessInfo, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, context::Context, Code};
use log::{error, info, warn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bundle::{Plan, Spec};

/// The runtime name containerd knows this shim by.
pub const RUNTIME: &str = "io.containerd.wasmvisor.v1";
/// The VM's control socket, in the bundle directory, where wasmvisor runs
/// (relative, so that a long bundle path does not hit the 108-byte limit
/// of a socket address).
pub const CONTROL_SOCKET: &str = "control.sock";
/// The running VM's pid, in the bundle directory, for `delete` after a
/// shim that died.
const PID_FILE: &str = "wasmvisor.pid";
/// The node's policy cache when `WASMVISOR_CACHE_DIR` is not set.
pub const DEFAULT_POLICY_CACHE: &str = "/var/lib/wasmvisor/policies";
/// The argument that makes this binary a pod sandbox's placeholder
/// process ([`pause`]).
pub const PAUSE: &str = "--wasmvisor-pause";
/// The wasmvisor binary, when `WASMVISOR_BIN` names none.
const WASMVISOR: &str = "wasmvisor";

/// How long the exit of a VM waits for its stderr to be copied out.
const STDERR_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// What `delete` reports for a task it had to clean up after (SIGKILL).
const KILLED: u32 = 128 + 9;

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

/// The serving shim's state, shared by the task service and the exit
/// watcher thread.
struct Shared {
    namespace: String,
    container: Mutex<Option<Container>>,
    /// Signalled whenever a container changes state.
    changed: Condvar,
    exit: ExitSignal,
}

/// The one container this shim serves.
struct Container {
    id: String,
    bundle: PathBuf,
    /// The rootfs mounts the shim made (and unmounts on delete).
    mounted: Option<PathBuf>,
    stdin: String,
    stdout: String,
    stderr: String,
    bin: PathBuf,
    args: Vec<OsString>,
    run: Run,
}

#[derive(Clone, Copy, Debug)]
enum Run {
    Created,
    Running { pid: u32 },
    Stopped { pid: u32, code: u32, at: (i64, i32) },
}

impl Container {
    fn pid(&self) -> u32 {
        match self.run {
            Run::Created => 0,
            Run::Running { pid } | Run::Stopped { pid, .. } => pid,
        }
    }
}

fn ts((seconds, nanos): (i64, i32)) -> MessageField<Timestamp> {
    MessageField::some(Timestamp {
        seconds,
        nanos,
        ..Default::default()
    })
}

fn now() -> (i64, i32) {
    timestamp()
        .map(|t| (t.seconds, t.nanos))
        .unwrap_or_default()
}

/// containerd's view of the shim binary.
pub struct Shim {
    shared: Arc<Shared>,
    /// The task API socket this serving shim listens on (`unix://PATH`).
    socket: String,
}

impl containerd_shim::Shim for Shim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Shim {
            shared: Arc::new(Shared {
                namespace: args.namespace.clone(),
                container: Mutex::new(None),
                changed: Condvar::new(),
                exit: ExitSignal::default(),
            }),
            socket: args.socket.clone(),
        }
    }

    /// `start`: launches the serving shim (one per container) and prints
    /// its address.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    /// `delete`: cleans up after a serving shim that is gone, from the
    /// bundle directory (the working directory): kills a VM it left and
    /// removes what it left.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let mut pid = 0;
        if let Ok(text) = fs::read_to_string(bundle.join(PID_FILE)) {
            if let Ok(p) = text.trim().parse::<i32>() {
                pid = p as u32;
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        cleanup(&bundle, Some(&bundle.join("rootfs")));
        Ok(DeleteResponse {
            pid,
            exit_status: KILLED,
            exited_at: ts(now()),
            ..Default::default()
        })
    }

    /// Waits for `shutdown`, then removes the socket. (The crate removes
    /// it too, but finds its path in the bundle's `address` file, which
    /// containerd may have deleted by then, after a failed create.)
    fn wait(&mut self) {
        self.shared.exit.wait();
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.is_empty() && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = fs::remove_file(path);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService {
            shared: Arc::clone(&self.shared),
            publisher: Arc::new(publisher),
        }
    }
}

/// The pod sandbox's placeholder: waits, doing nothing, until a signal
/// ends it (SIGTERM and SIGKILL keep their default action here).
pub fn pause() -> ! {
    loop {
        std::thread::park();
    }
}

/// Removes what a container left in its bundle: the pid file, a control
/// socket a killed wasmvisor could not remove, and the rootfs mounts.
fn cleanup(bundle: &Path, mounted: Option<&Path>) {
    let _ = fs::remove_file(bundle.join(PID_FILE));
    let socket = bundle.join(CONTROL_SOCKET);
    if fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = fs::remove_file(&socket);
    }
    if let Some(rootfs) = mounted {
        if let Some(path) = rootfs.to_str() {
            if let Err(e) = containerd_shim::mount::umount_recursive(Some(path), 0) {
                warn!("unmounting {path}: {e}");
            }
        }
    }
}

/// The task API served to containerd.
#[derive(Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
    publisher: Arc<RemotePublisher>,
}

fn publish(publisher: &RemotePublisher, namespace: &str, topic: &str, event: Box<dyn MessageDyn>) {
    if let Err(e) = publisher.publish(Context::default(), topic, namespace, event) {
        warn!("publishing {topic}: {e}");
    }
}

impl TaskService {
    fn lock(&self) -> MutexGuard<'_, Option<Container>> {
        self.shared
            .container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.shared.namespace, topic, event);
    }

    /// The container `id` names (and no exec: this runtime has none).
    fn check<'a>(
        guard: &'a mut MutexGuard<'_, Option<Container>>,
        id: &str,
        exec_id: &str,
    ) -> TtrpcResult<&'a mut Container> {
        if !exec_id.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "wasmvisor runs no extra processes in a VM (exec is not supported)",
            ));
        }
        match guard.as_mut() {
            Some(c) if c.id == id => Ok(c),
            _ => Err(status(Code::NOT_FOUND, format!("task {id} not found"))),
        }
    }

    /// Validates the bundle and prepares the `wasmvisor run` command line.
    fn prepare(req: &CreateTaskRequest) -> Result<Container, String> {
        if req.terminal {
            return Err("a terminal (tty) is not supported: the VM's console is its stdout".into());
        }
        if !req.checkpoint.is_empty() {
            return Err("checkpoints are not supported".into());
        }
        for io in [&req.stdout, &req.stderr] {
            if io.contains("://") && !io.starts_with("file://") {
                return Err(format!(
                    "stdio {io}: only FIFOs, files and file:// URIs are supported"
                ));
            }
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::read(&bundle).map_err(|e| e.0)?;
        let container = |mounted, bin, args| Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            mounted,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            bin,
            args,
            run: Run::Created,
        };
        if spec.is_sandbox() {
            // A Kubernetes pod's sandbox ("pause") container: a process
            // that holds the pod's place until it is killed, not a VM.
            let me = std::env::current_exe().map_err(|e| format!("the shim's own path: {e}"))?;
            return Ok(container(None, me, vec![PAUSE.into()]));
        }
        let mut mounted = None;
        if !req.rootfs.is_empty() {
            let target = bundle.join("rootfs");
            fs::create_dir_all(&target)
                .map_err(|e| format!("creating {}: {e}", target.display()))?;
            // Mounted so that a failure below can undo them.
            mounted = Some(target.clone());
            for m in &req.rootfs {
                if let Err(e) = containerd_shim::mount::mount_rootfs(
                    Some(m.type_.as_str()),
                    Some(m.source.as_str()),
                    &m.options,
                    &target,
                ) {
                    cleanup(&bundle, Some(&target));
                    return Err(format!("mounting the rootfs ({}): {e}", m.type_));
                }
            }
        }
        let plan = spec
            .rootfs(&bundle)
            .and_then(|rootfs| Plan::from_spec(&spec, &rootfs))
            .map_err(|e| e.0)
            .and_then(|p| Ok((p, find_wasmvisor()?)));
        let (plan, bin) = match plan {
            Ok(p) => p,
            Err(e) => {
                cleanup(&bundle, mounted.as_deref());
                return Err(e);
            }
        };
        for note in &plan.notes {
            warn!("{}: {note}", req.id);
        }
        let cache = std::env::var_os("WASMVISOR_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_CACHE));
        let args = plan.args(Path::new(CONTROL_SOCKET), &cache);
        Ok(container(mounted, bin, args))
    }

    /// Starts `wasmvisor run` as the container's process, and a thread
    /// that waits for its end.
    fn spawn(&self, c: &mut Container) -> Result<u32, String> {
        let stdout = match open_stdio(&c.stdout) {
            Ok(Some(f)) => Stdio::from(f),
            Ok(None) => Stdio::null(),
            Err(e) => return Err(format!("stdout {}: {e}", c.stdout)),
        };
        let stderr_sink = open_stdio(&c.stderr).map_err(|e| format!("stderr {}: {e}", c.stderr))?;
        // Before the spawn, so that an exit right after it is not missed.
        let exits = monitor_subscribe(Topic::Pid).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&c.bin);
        cmd.args(&c.args)
            .current_dir(&c.bundle)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", c.bin.display()))?;
        // The command holds the stdout FIFO: drop it so that the reader
        // sees its end when the VM's process ends.
        drop(cmd);
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        // The crate's reaper collects the process; the handle is not
        // waited on.
        drop(child);
        if let Err(e) = fs::write(c.bundle.join(PID_FILE), pid.to_string()) {
            warn!("{}: writing the pid file: {e}", c.id);
        }
        let copier = copy_stderr(c.id.clone(), stderr, stderr_sink);
        let (shared, publisher, id) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.publisher),
            c.id.clone(),
        );
        std::thread::Builder::new()
            .name("wasmvisor-exit".into())
            .spawn(move || {
                let code = wait_pid(pid as i32, exits) as u32;
                // Let the last of stderr out first, but not forever: a
                // FIFO nobody reads (after `ctr run -d`) can be full.
                let deadline = std::time::Instant::now() + STDERR_DRAIN;
                while !copier.is_finished() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                exited(&shared, &publisher, &id, pid, code);
            })
            .map_err(|e| e.to_string())?;
        Ok(pid)
    }
}

/// Records that the container's process ended with `code` and tells
/// containerd (TaskExit).
fn exited(shared: &Shared, publisher: &RemotePublisher, id: &str, pid: u32, code: u32) {
    let at = now();
    {
        let mut guard = shared.container.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_mut().filter(|c| c.id == id) {
            c.run = Run::Stopped { pid, code, at };
            let _ = fs::remove_file(c.bundle.join(PID_FILE));
        }
        shared.changed.notify_all();
    }
    info!("{id}: pid {pid} exited with {code}");
    publish(
        publisher,
        &shared.namespace,
        topics::TASK_EXIT_EVENT_TOPIC,
        Box::new(TaskExit {
            container_id: id.to_string(),
            id: id.to_string(),
            pid,
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        }),
    );
}

/// Opens the stdout or stderr containerd passed: a FIFO (opened
/// read-write, so that opening never blocks and a reader that went away,
/// as after `ctr run -d`, does not break the VM's writes), a file, or a
/// `file://` URI; `None` for an empty path.
fn open_stdio(path: &str) -> std::io::Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    if let Some(file) = path.strip_prefix("file://") {
        let file = file.split('?').next().unwrap_or(file);
        return OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .map(Some);
    }
    let fifo = fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut opts = OpenOptions::new();
    if fifo {
        opts.read(true).write(true);
    } else {
        opts.append(true).create(true);
    }
    opts.open(path).map(Some)
}

/// Copies wasmvisor's stderr to the container's stderr, and each error
/// line it writes (`wasmvisor: error: ...`) to containerd's log as well.
fn copy_stderr(
    id: String,
    stderr: std::process::ChildStderr,
    mut sink: Option<File>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            if text.starts_with("wasmvisor: error:") {
                error!("{id}: {}", text.trim_end());
            }
            if let Some(f) = sink.as_mut() {
                if f.write_all(&line).is_err() {
                    sink = None;
                }
            }
        }
    })
}

/// The wasmvisor binary: `$WASMVISOR_BIN` if set, else `wasmvisor` next
/// to this shim's own executable, else on `PATH`.
fn find_wasmvisor() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("WASMVISOR_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        return Err(format!(
            "WASMVISOR_BIN={} is not a file",
            bin.to_string_lossy()
        ));
    }
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(WASMVISOR));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(WASMVISOR))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "wasmvisor not found: install it next to containerd-shim-wasmvisor-v1 or on PATH, \
             or set WASMVISOR_BIN"
                .to_string()
        })
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let mut guard = self.lock();
        if guard.is_some() {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("this shim already serves a task; {} is a second", req.id),
            ));
        }
        let container = Self::prepare(&req).map_err(|e| {
            error!("{}: {e}", req.id);
            status(Code::INVALID_ARGUMENT, e)
        })?;
        info!(
            "{}: {} {}",
            req.id,
            container.bin.display(),
            container
                .args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        *guard = Some(container);
        drop(guard);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid: 0,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse {
            pid: 0,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let mut guard = self.lock();
        let c = Self::check(&mut guard, &req.id, &req.exec_id)?;
        if !matches!(c.run, Run::Created) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {} was already started", req.id),
            ));
        }
        let pid = self.spawn(c).map_err(|e| {
            error!("{}: {e}", req.id);
            status(Code::INTERNAL, e)
        })?;
        c.run = Run::Running { pid };
        info!("{}: started pid {pid}", req.id);
        // Under the lock: the exit watcher takes it before it publishes
        // TaskExit, so containerd sees the start first.
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }),
        );
        drop(guard);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let mut guard = self.lock();
        let c = Self::check(&mut guard, &req.id, &req.exec_id)?;
        let mut resp = StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: c.pid(),
            stdin: c.stdin.clone(),
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
            terminal: false,
            ..Default::default()
        };
        resp.status = match c.run {
            Run::Created => api::Status::CREATED,
            Run::Running { .. } => api::Status::RUNNING,
            Run::Stopped { code, at, .. } => {
                resp.exit_status = code;
                resp.exited_at = ts(at);
                api::Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let mut guard = self.lock();
        let c = Self::check(&mut guard, &req.id, "")?;
        let processes = match c.run {
            Run::Running { pid } => vec![ProcessInfo {
                pid,
                ..Default::default()
            }],
            _ => Vec::new(),
        };
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// Forwards the signal to wasmvisor, which ends with 128 + signal on
    /// SIGTERM and SIGINT (and is ended by SIGKILL). A task that never
    /// started ends at once with 128 + signal.
    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let mut guard = self.lock();
        let c = Self::check(&mut guard, &req.id, &req.exec_id)?;
        let signal = Signal::try_from(req.signal as i32)
            .map_err(|_| status(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
        match c.run {
            Run::Running { pid } => {
                info!("{}: signal {signal} to pid {pid}", c.id);
                kill(Pid::from_raw(pid as i32), signal)
                    .map_err(|e| status(Code::INTERNAL, format!("kill {pid}: {e}")))?;
            }
            Run::Created => {
                let (id, code, at) = (c.id.clone(), 128 + req.signal, now());
                c.run = Run::Stopped { pid: 0, code, at };
                self.shared.changed.notify_all();
                drop(guard);
                self.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: id.clone(),
                        id,
                        pid: 0,
                        exit_status: code,
                        exited_at: ts(at),
                        ..Default::default()
                    }),
                );
            }
            Run::Stopped { .. } => {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
        }
        Ok(Empty::default())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let mut guard = self.lock();
        let c = Self::check(&mut guard, &req.id, &req.exec_id)?;
        let (pid, code, at) = match c.run {
            Run::Running { pid } => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is running (pid {pid}): kill it first", req.id),
                ))
            }
            Run::Created => (0, 0, now()),
            Run::Stopped { pid, code, at } => (pid, code, at),
        };
        cleanup(&c.bundle, c.mounted.as_deref());
        *guard = None;
        self.shared.changed.notify_all();
        drop(guard);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: code,
                exited_at: ts(at),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid,
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        })
    }

    /// Blocks until the task has stopped.
    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut guard = self.lock();
        loop {
            let c = Self::check(&mut guard, &req.id, &req.exec_id)?;
            if let Run::Stopped { code, at, .. } = c.run {
                return Ok(WaitResponse {
                    exit_status: code,
                    exited_at: ts(at),
                    ..Default::default()
                });
            }
            guard = self
                .shared
                .changed
                .wait(guard)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let guard = self.lock();
        let task_pid = guard
            .as_ref()
            .filter(|c| c.id == req.id)
            .map_or(0, Container::pid);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    /// The console has no input, so there is no stdin to close.
    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<Empty> {
        Ok(Empty::default())
    }

    /// Ends the serving shim; a VM still running (containerd deletes the
    /// task first) is killed.
    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let guard = self.lock();
        if let Some(Run::Running { pid }) = guard.as_ref().map(|c| c.run) {
            warn!("shutdown with wasmvisor (pid {pid}) still running: killing it");
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        drop(guard);
        self.shared.exit.signal();
        Ok(Empty::default())
    }
}

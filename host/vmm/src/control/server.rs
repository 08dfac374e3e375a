//! The control socket: a Unix stream socket, mode 0600, that serves only
//! peers running as this process's user.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Controlled;
use crate::error::VmmError;

use super::protocol::{self, Command, Reply, MAX_REQUEST_BYTES};

/// Connections served at once; more are told to come back later.
const MAX_CONNECTIONS: usize = 8;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// The accept thread and the socket file it serves.
pub(crate) struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Requests being served right now.
    busy: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// How long shutdown waits for requests in flight to be answered.
const DRAIN: Duration = Duration::from_secs(5);

fn control_error(path: &Path, reason: impl std::fmt::Display) -> VmmError {
    VmmError::Usage(format!("control socket {}: {reason}", path.display()))
}

/// Binds `path` so that no other user can ever connect: the socket is
/// created inside a fresh 0700 directory, set to 0600 there, and only
/// then renamed into place.
fn bind_private(path: &Path) -> Result<UnixListener, VmmError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(control_error(path, "another process is serving it"));
            }
            // Left behind by a VM that did not shut down cleanly.
            fs::remove_file(path).map_err(|e| control_error(path, e))?;
        }
        Ok(_) => return Err(control_error(path, "exists and is not a socket")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(control_error(path, e)),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".wasmvisor-control-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| control_error(path, e))?;
    let staged = staging.join("s");
    let result = (|| {
        let listener = UnixListener::bind(&staged)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
        fs::rename(&staged, path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = fs::remove_dir_all(&staging);
    result.map_err(|e| control_error(path, e))
}

impl Server {
    pub fn start(path: &Path, swap: Arc<Controlled>) -> Result<Server, VmmError> {
        let listener = bind_private(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let (flag, in_flight) = (Arc::clone(&stop), Arc::clone(&busy));
        let me = rustix::process::geteuid();
        let thread = std::thread::Builder::new()
            .name("wasmvisor-control".into())
            .spawn(move || accept_loop(listener, swap, flag, in_flight, me))
            .map_err(|e| control_error(path, e))?;
        Ok(Server {
            path: path.to_path_buf(),
            stop,
            busy,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
        // A change that ended the VM (a policy that stops it at once) is
        // still owed its reply: let it go out before the process exits.
        let started = std::time::Instant::now();
        while self.busy.load(Ordering::Acquire) > 0 && started.elapsed() < DRAIN {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    swap: Arc<Controlled>,
    stop: Arc<AtomicBool>,
    busy: Arc<AtomicUsize>,
    me: rustix::process::Uid,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(cred) if cred.uid == me => {}
            Ok(cred) => {
                eprintln!(
                    "wasmvisor: control: refused a connection from uid {} (pid {}): only uid {} may control this VM",
                    cred.uid.as_raw(),
                    cred.pid.as_raw_nonzero(),
                    me.as_raw()
                );
                let _ = send(
                    &mut stream,
                    &Reply::error(
                        None,
                        format!(
                            "permission denied: this VM is controlled by uid {} only",
                            me.as_raw()
                        ),
                    ),
                );
                continue;
            }
            Err(e) => {
                let _ = send(
                    &mut stream,
                    &Reply::error(None, format!("cannot check peer credentials: {e}")),
                );
                continue;
            }
        }
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = send(
                &mut stream,
                &Reply::error(None, "too many control connections; try again"),
            );
            continue;
        }
        let (swap, active, busy) = (Arc::clone(&swap), Arc::clone(&active), Arc::clone(&busy));
        let spawned = std::thread::Builder::new()
            .name("wasmvisor-control-conn".into())
            .spawn(move || {
                serve(stream, &swap, &busy);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            eprintln!("wasmvisor: control: cannot start a connection thread");
        }
    }
}

fn send(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Serves requests until the peer closes, idles out, or sends something
/// that is not a request (answered, then the connection is closed).
fn serve(stream: UnixStream, swap: &Controlled, busy: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_REQUEST_BYTES {
                let _ = send(
                    &mut writer,
                    &Reply::error(
                        None,
                        format!("request longer than {MAX_REQUEST_BYTES} bytes; connection closed"),
                    ),
                );
            }
            // Else the peer closed mid-line: nothing to answer.
            return;
        }
        line.pop();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        busy.fetch_add(1, Ordering::AcqRel);
        let done = answer(&line, swap, &mut writer);
        busy.fetch_sub(1, Ordering::AcqRel);
        if !done {
            return;
        }
    }
}

/// Answers one request line; false if the connection must close.
fn answer(line: &[u8], vm: &Controlled, writer: &mut UnixStream) -> bool {
    let swap = &vm.swap;
    let reply = match protocol::parse(line) {
        Err((id, msg)) => {
            let _ = send(
                writer,
                &Reply::error(id, format!("{msg}; connection closed")),
            );
            return false;
        }
        Ok((id, Command::List)) => {
            let (generation, list) = swap.list();
            Reply::listing(id, generation, swap.memslots(), &list)
        }
        Ok((id, Command::Change(change))) => match swap.apply(change) {
            Ok(report) => Reply::changed(id, &report),
            Err(e) => Reply::error(id, e),
        },
        Ok((id, Command::Vm(op))) => match vm.vm_op(&op) {
            Ok(report) => Reply::vm_op(id, report),
            Err(e) => Reply::error(id, e),
        },
    };
    send(writer, &reply).is_ok()
}

//! A gdb remote stub for the VM (`run --gdb tcp:PORT|unix:PATH`,
//! docs/gdb.md), on the `gdbstub` crate.
//!
//! Threads: the stub has one thread, which accepts one gdb at a time and
//! runs gdbstub's state machine for it, plus a reader thread per session
//! that turns the socket's bytes into events. The vCPUs stay on their own
//! threads; the stub talks to them through a [`link::GdbLink`]:
//!
//! - **Stopping.** gdb's all-stop mode: when a vCPU stops for gdb (its
//!   breakpoint, its single-step, a write it watches) or gdb sends
//!   Ctrl-C, every vCPU is held. The stub pauses them with the quiesce
//!   (the same exit-boundary pause hot swaps and snapshots use), and as
//!   they leave the pause they see that gdb wants them held and hold in
//!   [`link::GdbLink::hold`], on their own threads.
//! - **Inspecting.** A held vCPU reads and writes its own registers when
//!   the stub asks (completing the exit in flight first); memory is read
//!   through its page tables, from the stub's thread.
//! - **Resuming.** The stub hands each vCPU gdb resumes a release with
//!   gdb's breakpoints and whether to single-step; the vCPU programs its
//!   debug registers and runs on.
//! - **Debug exits** go to gdb first while it is attached: an exit in a
//!   slot gdb holds, or a step gdb asked for, never reaches a policy.
//! - **Sharing DR0-3.** gdb takes only slots no policy uses on any vCPU;
//!   a slot gdb holds is refused to policies (`set-breakpoint` and
//!   `clear-breakpoint` answer `unsupported`). When gdb goes away its
//!   slots are freed, its int3s and page watches removed, and the VM runs
//!   on.

mod arch;
mod link;
mod monitor;
mod session;
mod table;
mod target;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::VmmError;
use crate::outcome::VmOutcome;

pub(crate) use link::{Claim, GdbLink, Holder, Stop};
pub(crate) use target::VmParts;

/// Where gdb connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbEndpoint {
    /// `tcp:PORT` (on 127.0.0.1) or `tcp:ADDR:PORT`.
    Tcp(SocketAddr),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl GdbEndpoint {
    /// Parses `tcp:PORT`, `tcp:ADDR:PORT` or `unix:PATH`.
    pub fn parse(s: &str) -> Result<GdbEndpoint, String> {
        let bad = || format!("invalid --gdb `{s}`: use tcp:PORT, tcp:ADDR:PORT or unix:PATH");
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(GdbEndpoint::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("tcp:").ok_or_else(bad)?;
        if let Ok(port) = rest.parse::<u16>() {
            return Ok(GdbEndpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        rest.parse::<SocketAddr>()
            .map(GdbEndpoint::Tcp)
            .map_err(|_| bad())
    }
}

impl std::fmt::Display for GdbEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GdbEndpoint::Tcp(a) => write!(f, "tcp:{a}"),
            GdbEndpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `--gdb` and `--gdb-nowait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GdbSpec {
    pub endpoint: GdbEndpoint,
    /// The vCPUs wait for gdb before their first instruction.
    pub wait: bool,
}

/// The bound socket, made before the VM is built so that a port in use
/// is a startup error.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn bind(spec: &GdbSpec) -> Result<Listener, VmmError> {
        let fail =
            |e: std::io::Error| VmmError::Gdb(format!("cannot listen on {}: {e}", spec.endpoint));
        let listener = match &spec.endpoint {
            GdbEndpoint::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).map_err(fail)?),
            GdbEndpoint::Unix(path) => {
                // A socket left by an earlier run is replaced; anything
                // else at the path is not.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(fail)?;
                // Whoever connects controls the VM: the owner only.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(fail)?;
                Listener::Unix(l, path.clone())
            }
        };
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
        .map_err(fail)?;
        Ok(listener)
    }

    /// What to tell the user: where gdb connects, and how.
    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{a} (gdb: target remote {a})"),
                Err(_) => "tcp".to_string(),
            },
            Listener::Unix(_, p) => {
                format!("unix:{} (gdb: target remote {})", p.display(), p.display())
            }
        }
    }

    /// A connection, if one is waiting.
    fn accept(&self) -> std::io::Result<Option<session::Stream>> {
        let got = match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| session::Stream::Tcp(s)),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| session::Stream::Unix(s)),
        };
        match got {
            Ok(s) => {
                s.set_nonblocking(false)?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The stub's thread and what the VM shares with it.
pub(crate) struct GdbServer {
    link: Arc<GdbLink>,
    done: Arc<AtomicBool>,
    killed: Arc<Mutex<bool>>,
    thread: Option<JoinHandle<()>>,
}

/// How often the accept loop looks for gdb and for the VM's end.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

impl GdbServer {
    /// Starts serving gdb on `listener` for the VM behind `link`.
    pub fn start(
        listener: Listener,
        link: Arc<GdbLink>,
        vm: VmParts,
        vcpus: usize,
        wait: bool,
    ) -> Result<GdbServer, VmmError> {
        eprintln!(
            "wasmvisor: gdb: {} on {}",
            if wait {
                "the VM waits for gdb"
            } else {
                "listening"
            },
            listener.describe()
        );
        let done = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(Mutex::new(false));
        let thread = {
            let (link, done, killed) = (Arc::clone(&link), Arc::clone(&done), Arc::clone(&killed));
            std::thread::Builder::new()
                .name("gdb".into())
                .spawn(move || serve(listener, link, vm, vcpus, &done, &killed))
                .map_err(|e| VmmError::Engine(format!("cannot start the gdb thread: {e}")))?
        };
        Ok(GdbServer {
            link,
            done,
            killed,
            thread: Some(thread),
        })
    }

    /// The VM has ended with `outcome`: gdb is told (if attached), the
    /// stub stops, and a kill from gdb becomes the outcome.
    pub fn finish(mut self, outcome: &mut VmOutcome) {
        let code = outcome.exit_code().clamp(0, 255) as u8;
        self.done.store(true, Ordering::Release);
        self.link.notify(link::StubEvent::VmEnded(code));
        if let Some(t) = self.thread.take() {
            // gdb gets a moment to hear of the exit; the run does not wait
            // on a debugger that stopped reading.
            let deadline = Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        if *self.killed.lock().unwrap_or_else(PoisonError::into_inner)
            && matches!(outcome, VmOutcome::Halted)
        {
            *outcome = VmOutcome::Debugger("kill".into());
        }
    }
}

/// The stub's thread: one gdb at a time, until the VM ends or gdb kills
/// it.
fn serve(
    listener: Listener,
    link: Arc<GdbLink>,
    vm: VmParts,
    vcpus: usize,
    done: &AtomicBool,
    killed: &Mutex<bool>,
) {
    let mut target = target::VmTarget::new(Arc::clone(&link), vm, vcpus);
    while !done.load(Ordering::Acquire) {
        let stream = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                eprintln!("wasmvisor: gdb: cannot accept a connection: {e}");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        eprintln!("wasmvisor: gdb: attached");
        let end = session::run(stream, &mut target, done);
        if target.killed {
            *killed.lock().unwrap_or_else(PoisonError::into_inner) = true;
            eprintln!("wasmvisor: gdb: killed the VM");
            return;
        }
        if done.load(Ordering::Acquire) {
            eprintln!("wasmvisor: gdb: {end}");
            return;
        }
        eprintln!("wasmvisor: gdb: {end}; the VM runs on");
    }
}

/// Writes the kallsyms of the Linux image `kernel` (vmlinux or bzImage)
/// as an ELF symbol file for gdb's `add-symbol-file` (docs/gdb.md), each
/// address moved by `slide`; returns how many symbols it holds.
pub fn write_symbol_file(
    kernel: &std::path::Path,
    out: &std::path::Path,
    slide: u64,
) -> Result<usize, VmmError> {
    let profile = wasmvisor_profile::Profile::from_file(kernel)
        .map_err(|e| VmmError::KernelProfile(e.to_string()))?;
    let elf = wasmvisor_profile::symfile::symbol_file(&profile.symbols, slide);
    std::fs::write(out, elf).map_err(|e| VmmError::Read {
        what: "symbol file",
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(profile.symbols.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            GdbEndpoint::parse("tcp:1234"),
            Ok(GdbEndpoint::Tcp("127.0.0.1:1234".parse().unwrap()))
        );
        assert_eq!(
            GdbEndpoint::parse("tcp:0.0.0.0:9"),
            Ok(GdbEndpoint::Tcp("0.0.0.0:9".parse().unwrap()))
        );
        assert_eq!(
            GdbEndpoint::parse("unix:/tmp/g.sock"),
            Ok(GdbEndpoint::Unix("/tmp/g.sock".into()))
        );
        for bad in ["1234", "tcp:", "tcp:x", "unix:", "udp:1"] {
            assert!(GdbEndpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            GdbEndpoint::parse("tcp:1234").unwrap().to_string(),
            "tcp:127.0.0.1:1234"
        );
    }

    #[test]
    fn a_port_in_use_is_refused_at_bind() {
        let first = Listener::bind(&GdbSpec {
            endpoint: GdbEndpoint::parse("tcp:0").unwrap(),
            wait: true,
        })
        .expect("bind");
        let Listener::Tcp(l) = &first else {
            unreachable!()
        };
        let port = l.local_addr().unwrap().port();
        let again = Listener::bind(&GdbSpec {
            endpoint: GdbEndpoint::parse(&format!("tcp:{port}")).unwrap(),
            wait: true,
        });
        let err = again.err().expect("in use").to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}

//! One gdb connection: the socket, the thread that reads it, and the loop
//! that drives gdbstub's state machine with gdb's bytes and the vCPUs'
//! stops.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};

use super::link::StubEvent;
use super::target::VmTarget;

/// gdb's socket, with writes gathered until gdbstub flushes a packet.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => Write::write_all(s, buf),
            Stream::Unix(s) => Write::write_all(s, buf),
        }
    }
}

/// What gdbstub writes to.
struct Conn {
    stream: Stream,
    out: Vec<u8>,
}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> std::io::Result<()> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let out = std::mem::take(&mut self.out);
        self.stream.write_all(&out)
    }

    fn on_session_start(&mut self) -> std::io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }
}

/// Reads gdb's bytes until the connection closes.
fn read_loop(mut stream: Stream, tx: Sender<StubEvent>) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(StubEvent::Closed);
                return;
            }
            Ok(n) => {
                if tx.send(StubEvent::Data(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves one gdb on `stream` until it goes away, kills the VM, or the VM
/// ends; returns how it ended, for the log.
pub(crate) fn run(stream: Stream, target: &mut VmTarget, done: &AtomicBool) -> String {
    let (tx, rx) = mpsc::channel();
    let (reader, closer) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return format!("cannot use the connection: {e}"),
    };
    let reader = {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("gdb-reader".into())
            .spawn(move || read_loop(reader, tx))
    };
    target.link.attach(tx);
    let end = match target.stop_all() {
        Ok(()) => {
            target.choose_layout();
            drive(stream, target, &rx, done)
        }
        Err(e) => format!("cannot stop the VM for gdb: {e}"),
    };
    if !target.killed {
        target.detach();
    }
    target.link.detach();
    closer.shutdown();
    if let Ok(r) = reader {
        let _ = r.join();
    }
    end
}

/// What the loop waits for next.
enum Next {
    Byte(u8),
    Stopped,
    Closed,
    VmEnded(u8),
}

fn next(rx: &Receiver<StubEvent>, pending: &mut VecDeque<u8>, done: &AtomicBool) -> Next {
    loop {
        if let Some(b) = pending.pop_front() {
            return Next::Byte(b);
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(StubEvent::Data(bytes)) => pending.extend(bytes),
            Ok(StubEvent::Stopped) => return Next::Stopped,
            Ok(StubEvent::Closed) => return Next::Closed,
            Ok(StubEvent::VmEnded(code)) => return Next::VmEnded(code),
            Err(RecvTimeoutError::Timeout) if done.load(Ordering::Acquire) => {
                return Next::VmEnded(0)
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Next::Closed,
        }
    }
}

/// `$O<hex>#cs`: a line for gdb's console while the target runs.
fn console_packet(line: &str) -> Vec<u8> {
    let hex: String = format!("{line}\n")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let body = format!("O{hex}");
    let sum = body.bytes().fold(0u8, |s, b| s.wrapping_add(b));
    format!("${body}#{sum:02x}").into_bytes()
}

/// gdbstub's state machine, fed with gdb's bytes and the vCPUs' stops.
fn drive(
    stream: Stream,
    target: &mut VmTarget,
    rx: &Receiver<StubEvent>,
    done: &AtomicBool,
) -> String {
    let conn = Conn {
        stream,
        out: Vec::new(),
    };
    let mut gdb = match GdbStub::new(conn).run_state_machine(target) {
        Ok(g) => g,
        Err(e) => return format!("gdb session failed: {e}"),
    };
    let mut pending = VecDeque::new();
    loop {
        let step = match gdb {
            GdbStubStateMachine::Idle(g) => match next(rx, &mut pending, done) {
                Next::Byte(b) => g.incoming_data(target, b),
                Next::Stopped => Ok(GdbStubStateMachine::Idle(g)),
                Next::Closed => return "gdb closed the connection".into(),
                Next::VmEnded(_) => return "the VM ended".into(),
            },
            GdbStubStateMachine::Running(mut g) => {
                for line in target.take_notices() {
                    let conn = g.borrow_conn();
                    let _ = conn.write_all(&console_packet(&line));
                    let _ = conn.flush();
                }
                if let Some(reason) = target.take_stop() {
                    if let Err(e) = target.stop_all() {
                        eprintln!("wasmvisor: gdb: {e}");
                    }
                    g.report_stop(target, reason)
                } else {
                    match next(rx, &mut pending, done) {
                        Next::Byte(b) => g.incoming_data(target, b),
                        Next::Stopped => Ok(GdbStubStateMachine::Running(g)),
                        Next::Closed => return "gdb closed the connection".into(),
                        Next::VmEnded(code) => {
                            g.report_stop(target, MultiThreadStopReason::Exited(code))
                        }
                    }
                }
            }
            GdbStubStateMachine::CtrlCInterrupt(g) => {
                if let Err(e) = target.stop_all() {
                    eprintln!("wasmvisor: gdb: {e}");
                }
                let reason = target.interrupted();
                g.interrupt_handled(target, Some(reason))
            }
            GdbStubStateMachine::Disconnected(g) => {
                return match g.get_reason() {
                    DisconnectReason::Disconnect => "gdb detached".into(),
                    DisconnectReason::Kill => {
                        target.kill();
                        "gdb killed the VM".into()
                    }
                    DisconnectReason::TargetExited(code) => {
                        format!("the VM ended (exit code {code})")
                    }
                    DisconnectReason::TargetTerminated(sig) => format!("the VM ended ({sig})"),
                };
            }
        };
        gdb = match step {
            Ok(g) => g,
            Err(e) => return format!("gdb connection lost: {e}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_packets_are_hex_with_a_checksum() {
        // "hi\n" = 68 69 0a; O + hex, summed mod 256.
        let p = console_packet("hi");
        assert_eq!(p, b"$O68690a#bd");
    }
}

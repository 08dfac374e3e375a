//! Measurements of whole processes: the `wasmvisor` binary and QEMU.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Starts `cmd` and returns the milliseconds from just before the spawn
/// to the first byte on its standard output, which must be `expect`.
/// The process is then left to exit (or killed after `linger`).
pub fn first_byte_ms(cmd: &mut Command, expect: u8, linger: Duration) -> Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().context("cannot start the process")?;
    let result = read_first_byte(&mut child, started);
    finish(&mut child, linger);
    let (ms, byte) = result?;
    if byte != expect {
        bail!(
            "first console byte was {:?}, expected {:?}",
            byte as char,
            expect as char
        );
    }
    Ok(ms)
}

fn read_first_byte(child: &mut Child, started: Instant) -> Result<(f64, u8)> {
    let mut out = child.stdout.take().context("no stdout pipe")?;
    // A reader thread stamps the byte the moment it arrives; the caller
    // gives up after 20 s (the thread ends when the process is killed).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let read = out.read(&mut byte).map(|n| (n, Instant::now(), byte[0]));
        let _ = tx.send(read);
    });
    let (n, at, byte) = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(read) => read.context("cannot read the console")?,
        Err(_) => bail!("no console output within 20 s"),
    };
    if n == 0 {
        bail!("the process closed its console without writing to it");
    }
    Ok((at.duration_since(started).as_secs_f64() * 1e3, byte))
}

/// Waits up to `linger` for the child to exit, then kills it.
fn finish(child: &mut Child, linger: Duration) {
    let deadline = Instant::now() + linger;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Resident memory of a running process, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
    /// RssAnon: private anonymous memory (heap, Wasm instances, guest RAM), KiB.
    pub anon_kib: u64,
    /// RssFile: pages of the binary and libraries (clean, shared), KiB.
    pub file_kib: u64,
}

/// Milliseconds from spawning `cmd` to its exit, its output discarded;
/// fails unless it exits with `code`.
pub fn exec_to_exit_ms(cmd: &mut Command, code: i32) -> Result<f64> {
    let started = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if status.code() != Some(code) {
        bail!("{cmd:?} ended with {status}, expected exit code {code}");
    }
    Ok(ms)
}

/// Samples the memory of `pid`.
pub fn memory_of(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("cannot read /proc/PID/status")?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/PID/status"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
    })
}

/// Sends SIGINT and waits for the process to end (SIGKILL after 5 s).
pub fn interrupt(child: &mut Child) {
    // std can only send SIGKILL; SIGINT lets the VMM stop cleanly.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    finish(child, Duration::from_secs(5));
}

/// The first line `cmd --version` prints, if it runs.
pub fn version_line(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

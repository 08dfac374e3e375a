//! Passthrough BAR access, mapped against trapped: the `pci` guest drives
//! the vfio-user test device server, whose BAR 2 (64 KiB of memory shared
//! with the server) it fills and sums with 32768 dword accesses. With no
//! policy, BAR 2 is a KVM memslot and those accesses never exit; with
//! pci-guard subscribed to all of BAR 2, each one is an MMIO exit that the
//! policy sees and the VMM forwards over the vfio-user socket (ADR 0005).
//! The difference in run time over the difference in MMIO exits is the
//! cost of one trapped access.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use wasmvisor_vfio::SHARED_BAR_SIZE;

/// Where the guest finds the server's shared BAR (the larger BAR goes
/// first in the 32-bit window), and its size.
pub const BAR2: (u64, u64) = (0xe800_0000, SHARED_BAR_SIZE);

/// The vfio-user test device server, killed on drop.
pub struct Server {
    child: Child,
    socket: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Server {
    /// Starts `binary --socket DIR/bench-testdev.sock` and waits for the
    /// socket. The server serves one client after another.
    pub fn start(binary: &Path, dir: &Path) -> Result<Server> {
        let socket = dir.join("bench-testdev.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(binary)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let server = Server { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.socket.exists() {
            if Instant::now() > deadline {
                bail!("{} made no socket within 10 s", binary.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    /// The `--device` argument that reaches this server.
    pub fn device(&self) -> String {
        format!("vfio-user={}", self.socket.display())
    }
}

/// One run of the guest, from its `--stats` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BarRun {
    /// The VM's run time, guest entry to reset, in milliseconds.
    pub wall_ms: f64,
    pub mmio_exits: u64,
    /// Bytes of BARs the VMM had mapped as memslots.
    pub mapped_bytes: u64,
}

impl BarRun {
    /// Reads a run from the `stats: {...}` line of wasmvisor's stderr.
    pub fn from_stderr(stderr: &str) -> Result<BarRun> {
        let json = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stats: "))
            .context("no stats line: was --stats given?")?;
        let v: Value = serde_json::from_str(json).context("the stats line is not JSON")?;
        let wall = &v["wall"];
        let secs = wall["secs"].as_f64().context("no wall.secs")?;
        let nanos = wall["nanos"].as_f64().context("no wall.nanos")?;
        // Exit counts in ExitKind order: io, mmio, ...
        let mmio_exits = v["exits"][1].as_u64().context("no mmio exit count")?;
        let mapped_bytes = v["devices"][0]["mapped_bar_bytes"]
            .as_u64()
            .context("no passthrough device in the stats")?;
        Ok(BarRun {
            wall_ms: secs * 1e3 + nanos / 1e6,
            mmio_exits,
            mapped_bytes,
        })
    }
}

/// Runs the `pci` guest once against `device`, with `policies`.
pub fn run_once(
    wasmvisor: &Path,
    guest: &Path,
    device: &str,
    policies: &[String],
) -> Result<BarRun> {
    let mut cmd = Command::new(wasmvisor);
    cmd.args(["run", "--guest"])
        .arg(guest)
        .args(["--mode", "protected", "--serial", "native", "--stats"])
        .args(["--device", device]);
    for p in policies {
        cmd.args(["--policy", p]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run wasmvisor")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("pci: bar2 sum") {
        bail!(
            "the pci guest did not finish (exit {:?}): {}",
            out.status.code(),
            stderr.lines().last().unwrap_or("no output")
        );
    }
    BarRun::from_stderr(&stderr)
}

/// Microseconds one trapped access costs over a mapped one: the extra run
/// time over the extra MMIO exits (NaN when there are none).
pub fn per_trapped_access_us(mapped: &BarRun, trapped: &BarRun) -> f64 {
    let extra = trapped.mmio_exits.saturating_sub(mapped.mmio_exits);
    if extra == 0 {
        return f64::NAN;
    }
    (trapped.wall_ms - mapped.wall_ms) * 1e3 / extra as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_run_from_the_stats_line() {
        let stderr = "exits: 953 in 0.141 s (6738/s): io 935, mmio 18\n\
            stats: {\"exits\":[935,18,0,0,0,0,0],\"policies\":[],\"builtin\":953,\"default\":0,\
            \"devices\":[{\"device\":\"vfio-user=/tmp/s.sock\",\"irq_routes\":3,\"irqs_by_vmm\":0,\
            \"mapped_bar_bytes\":65536}],\"wall\":{\"secs\":1,\"nanos\":141430747}}\n";
        let run = BarRun::from_stderr(stderr).unwrap();
        assert_eq!(run.mmio_exits, 18);
        assert_eq!(run.mapped_bytes, 65536);
        assert!((run.wall_ms - 1141.430747).abs() < 1e-6);
        assert!(BarRun::from_stderr("exits: 1 in 0.1 s").is_err());
    }

    #[test]
    fn the_cost_of_a_trapped_access_is_the_extra_time_over_the_extra_exits() {
        let mapped = BarRun {
            wall_ms: 100.0,
            mmio_exits: 18,
            mapped_bytes: 65536,
        };
        let trapped = BarRun {
            wall_ms: 1100.0,
            mmio_exits: 18 + 32768,
            mapped_bytes: 0,
        };
        let us = per_trapped_access_us(&mapped, &trapped);
        assert!((us - 1e6 / 32768.0).abs() < 1e-9, "{us}");
        assert!(per_trapped_access_us(&mapped, &mapped).is_nan());
    }
}

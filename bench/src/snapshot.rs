//! Snapshots and fast reset (`docs/snapshots.md`), measured three ways:
//!
//! - fuzzing throughput: the fuzzer policy on the fuzzme guest, every exec
//!   a GET_INPUT and a DONE doorbell and a reset to the baseline, with the
//!   rate taken from the events' host timestamps ([`fuzz`]);
//! - reset latency against dirty pages: the benchmark guest's `dirty`
//!   entry stores into the same N pages over and over, so the pages a
//!   reset copies back are exactly those N; the harness takes a baseline
//!   and resets over the control socket ([`resets`]);
//! - restore: a snapshot of the benchmark guest's `chatter` entry, which
//!   writes `\n` to COM1 forever, resumes printing at once, so process
//!   start to first console byte of `run --restore` is the restore's cost
//!   ([`chatter_snapshot`]; the start-up machinery times it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use wasmvisor_vmm::control::{ControlClient, Request};

use crate::guest;

/// A VM serving a control socket, killed on drop.
pub struct Vm {
    child: Child,
    control: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.control);
    }
}

impl Vm {
    /// Starts `binary run --guest IMAGE --mode protected --entry ENTRY
    /// EXTRA... --control WORK/TAG.sock` with its console discarded, and
    /// waits for the socket.
    pub fn start(
        binary: &Path,
        image: &Path,
        entry: u64,
        extra: &[String],
        work: &Path,
        tag: &str,
    ) -> Result<Vm> {
        let control = work.join(format!("{tag}.sock"));
        let _ = std::fs::remove_file(&control);
        let child = Command::new(binary)
            .arg("run")
            .arg("--guest")
            .arg(image)
            .args(["--mode", "protected", "--entry", &format!("{entry:#x}")])
            .args(extra)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start wasmvisor")?;
        let mut vm = Vm { child, control };
        let started = Instant::now();
        while !vm.control.exists() {
            if let Ok(Some(status)) = vm.child.try_wait() {
                bail!("wasmvisor ended before serving its control socket: {status}");
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("no control socket after 20 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(vm)
    }

    pub fn client(&self) -> Result<ControlClient> {
        Ok(ControlClient::connect(
            &self.control,
            Duration::from_secs(60),
        )?)
    }
}

/// Sends a whole-VM request (`baseline`, `reset`, `snapshot`) and returns
/// the reply's report and the round trip in microseconds.
pub fn vm_op(client: &mut ControlClient, op: &str, path: Option<&Path>) -> Result<(Value, f64)> {
    let request = Request {
        op: op.into(),
        path: path.map(|p| p.display().to_string()),
        ..Request::default()
    };
    let sent = Instant::now();
    let r = client.request(&request)?;
    let round_trip_us = sent.elapsed().as_secs_f64() * 1e6;
    if !r.ok {
        bail!("{op} refused: {}", r.error.unwrap_or_default());
    }
    Ok((r.report.unwrap_or_default(), round_trip_us))
}

/// One reset as the VM reports it, plus the client's round trip.
#[derive(Debug, Clone, Copy)]
pub struct ResetSample {
    /// Pages copied back.
    pub pages: u64,
    /// The VM's time, from the held VM's reset starting to every vCPU
    /// handed its state (reading the dirty logs, copying, the VM's and
    /// devices' state).
    pub total_us: f64,
    /// Of which copying the pages back.
    pub copy_us: f64,
    /// The client's: request written to reply read, which adds holding
    /// and resuming the vCPUs and the socket.
    pub round_trip_us: f64,
}

impl ResetSample {
    fn from_report(report: &Value, round_trip_us: f64) -> ResetSample {
        let f = |k: &str| report[k].as_f64().unwrap_or(f64::NAN);
        ResetSample {
            pages: report["pages"].as_u64().unwrap_or(0),
            total_us: f("total_us"),
            copy_us: f("copy_us"),
            round_trip_us,
        }
    }
}

/// What [`resets`] measured for one page count.
#[derive(Debug, Clone)]
pub struct ResetRun {
    pub samples: Vec<ResetSample>,
    /// The time the guest was left to run between two resets, enough for
    /// one whole pass over its pages.
    pub gap: Duration,
    /// Non-zero bytes of RAM the baseline held.
    pub baseline_bytes: u64,
}

/// The longest gap between two resets before giving up on a pass.
const MAX_GAP: Duration = Duration::from_secs(2);

/// `reps` resets of a VM whose guest writes `pages` pages between them:
/// the dirty entry of a copy of `bench_bin` with the count set to
/// `pages`, or for 0 the spin entry (port writes, no stores). The gap
/// between resets starts at 1 ms and doubles whenever a reset finds fewer
/// pages than `pages` (the guest had not finished a pass yet); such
/// resets are not counted.
pub fn resets(
    binary: &Path,
    bench_bin: &Path,
    work: &Path,
    pages: u32,
    reps: usize,
) -> Result<ResetRun> {
    let (image, entry) = if pages == 0 {
        (bench_bin.to_path_buf(), guest::ENTRY_SPIN)
    } else {
        (guest::patched(bench_bin, work, pages)?, guest::ENTRY_DIRTY)
    };
    let vm = Vm::start(
        binary,
        &image,
        entry,
        &["--serial".into(), "native".into()],
        work,
        &format!("reset-{pages}"),
    )?;
    let mut client = vm.client()?;
    // A first pass before the baseline, so that the pages hold data.
    std::thread::sleep(Duration::from_millis(50));
    let (base, _) = vm_op(&mut client, "baseline", None)?;
    let baseline_bytes = base["ram_bytes"].as_u64().unwrap_or(0);
    let want = u64::from(pages);
    let mut gap = Duration::from_millis(1);
    // Warm-up: three full resets in a row at the same gap.
    let mut full = 0;
    while full < 3 {
        std::thread::sleep(gap);
        let (r, rt) = vm_op(&mut client, "reset", None)?;
        if ResetSample::from_report(&r, rt).pages < want {
            gap *= 2;
            full = 0;
            if gap > MAX_GAP {
                bail!("the guest did not write {pages} pages within {MAX_GAP:?}");
            }
        } else {
            full += 1;
        }
    }
    let mut samples = Vec::with_capacity(reps);
    while samples.len() < reps {
        std::thread::sleep(gap);
        let (r, rt) = vm_op(&mut client, "reset", None)?;
        let s = ResetSample::from_report(&r, rt);
        if s.pages < want {
            gap *= 2;
            if gap > MAX_GAP {
                bail!("the guest did not write {pages} pages within {MAX_GAP:?}");
            }
            continue;
        }
        samples.push(s);
    }
    drop(vm);
    if pages > 0 {
        let _ = std::fs::remove_file(&image);
    }
    Ok(ResetRun {
        samples,
        gap,
        baseline_bytes,
    })
}

/// Writes a snapshot of the benchmark guest's chatter entry into `dir`
/// (replaced if it exists): a VM started with `extra` (its console and
/// policies) runs for 100 ms, is snapshotted over the control socket and
/// killed. Restored, the guest goes on writing `\n`.
pub fn chatter_snapshot(
    binary: &Path,
    bench_bin: &Path,
    work: &Path,
    extra: &[String],
    dir: &Path,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let dir = std::path::absolute(dir)?;
    let tag = format!(
        "chatter-{}",
        dir.file_name()
            .map_or("snap".into(), |n| n.to_string_lossy())
    );
    let vm = Vm::start(binary, bench_bin, guest::ENTRY_CHATTER, extra, work, &tag)?;
    let mut client = vm.client()?;
    std::thread::sleep(Duration::from_millis(100));
    vm_op(&mut client, "snapshot", Some(&dir))?;
    drop(vm);
    Ok(())
}

/// The fuzzme guest's seed corpus (`examples/guests/fuzzme-seeds/*.bin`,
/// in name order) as the fuzzer's `seeds=` value: hex, joined by `+`.
pub fn seeds(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    if files.is_empty() {
        bail!("no seeds in {}", dir.display());
    }
    files.sort();
    let mut hex = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        hex.push(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    Ok(hex.join("+"))
}

/// One fuzzing run, from its events.
#[derive(Debug, Clone)]
pub struct FuzzRun {
    pub execs: u64,
    pub findings: u64,
    /// Why the fuzzer stopped (`max-execs` when all went to plan).
    pub reason: String,
    /// Process start to exit, ms.
    pub wall_ms: f64,
    /// `fuzz-start` (the baseline taken) to `fuzz-stop`, µs of the host's
    /// event clock.
    pub run_us: f64,
    /// Execs per second over `run_us`.
    pub execs_per_s: f64,
    /// Execs per second from the first `fuzz-stats` to `fuzz-stop`: the
    /// steady rate, without the first stats period.
    pub steady_execs_per_s: Option<f64>,
    /// `t_us` of `fuzz-start`: set-up from the policies' start to the
    /// baseline.
    pub start_us: f64,
}

/// Runs the fuzzer on `fuzzme` for `execs` execs, with
/// `stop-on-crash=false` (findings reset and go on), events in `work`.
pub fn fuzz(
    binary: &Path,
    fuzzme: &Path,
    fuzzer: &Path,
    seeds: &str,
    work: &Path,
    execs: u64,
) -> Result<FuzzRun> {
    let events = work.join("fuzz.jsonl");
    let _ = std::fs::remove_file(&events);
    let policy = format!(
        "{}:seeds={seeds},stop-on-crash=false,max-execs={execs},stats-every=1000,\
         @grant=set-registers,@grant=write-memory,@grant=stop-vm,@grant=snapshot",
        fuzzer.display()
    );
    let started = Instant::now();
    let out = Command::new(binary)
        .arg("run")
        .arg("--guest")
        .arg(fuzzme)
        .args(["--policy", &policy])
        .arg("--events")
        .arg(&events)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("cannot run wasmvisor")?;
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "the fuzzer run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = std::fs::read_to_string(&events)
        .with_context(|| format!("cannot read {}", events.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let _ = std::fs::remove_file(&events);
    parse_fuzz(&lines, wall_ms)
}

/// A [`FuzzRun`] from a run's event lines.
pub fn parse_fuzz(lines: &[Value], wall_ms: f64) -> Result<FuzzRun> {
    let of = |kind: &str| lines.iter().find(|e| e["kind"] == kind);
    let t = |e: &Value| e["t_us"].as_f64().unwrap_or(f64::NAN);
    let start = of("fuzz-start").context("no fuzz-start event")?;
    let stop = of("fuzz-stop").context("no fuzz-stop event")?;
    let first_stats = of("fuzz-stats");
    let execs = stop["data"]["execs"].as_u64().unwrap_or(0);
    let findings = stop["data"]["findings"].as_u64().unwrap_or(0);
    let run_us = t(stop) - t(start);
    let steady_execs_per_s = first_stats.and_then(|s| {
        let n = execs.checked_sub(s["data"]["execs"].as_u64()?)?;
        let us = t(stop) - t(s);
        (n > 0 && us > 0.0).then(|| n as f64 / (us / 1e6))
    });
    Ok(FuzzRun {
        execs,
        findings,
        reason: stop["data"]["reason"].as_str().unwrap_or("?").to_string(),
        wall_ms,
        run_us,
        execs_per_s: execs as f64 / (run_us / 1e6),
        steady_execs_per_s,
        start_us: t(start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fuzz_rates_come_from_the_event_timestamps() {
        let lines = vec![
            json!({"t_us": 1000, "kind": "fuzz-start", "data": {}}),
            json!({"t_us": 2000, "kind": "finding", "data": {"execs": 3}}),
            json!({"t_us": 101_000, "kind": "fuzz-stats", "data": {"execs": 1000}}),
            json!({"t_us": 201_000, "kind": "fuzz-stats", "data": {"execs": 2000}}),
            json!({"t_us": 201_010, "kind": "fuzz-stop",
                   "data": {"execs": 2000, "findings": 4, "reason": "max-execs"}}),
        ];
        let r = parse_fuzz(&lines, 250.0).unwrap();
        assert_eq!(
            (r.execs, r.findings, r.reason.as_str()),
            (2000, 4, "max-execs")
        );
        assert_eq!(r.run_us, 200_010.0);
        assert!((r.execs_per_s - 2000.0 / 0.200_010).abs() < 1e-6);
        let steady = r.steady_execs_per_s.unwrap();
        assert!((steady - 1000.0 / 0.100_010).abs() < 1e-6, "{steady}");
        assert_eq!(r.start_us, 1000.0);
    }

    #[test]
    fn a_run_without_start_or_stop_is_refused() {
        let stop = json!({"t_us": 5, "kind": "fuzz-stop", "data": {"execs": 1}});
        assert!(parse_fuzz(std::slice::from_ref(&stop), 1.0).is_err());
        let start = json!({"t_us": 1, "kind": "fuzz-start", "data": {}});
        assert!(parse_fuzz(std::slice::from_ref(&start), 1.0).is_err());
        let r = parse_fuzz(&[start, stop], 1.0).unwrap();
        assert!(r.steady_execs_per_s.is_none());
    }
}

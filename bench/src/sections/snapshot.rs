//! Section 7, snapshots and fast reset: fuzzing throughput (the fuzzer
//! policy on the fuzzme guest, a reset per exec), reset latency against
//! the number of dirty pages, and restoring a snapshot in a new process
//! against a cold boot of the same guest.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::snapshot::{self, ResetSample};
use wasmvisor_bench::stats::{median, min};
use wasmvisor_bench::{guest, procs};

use crate::opts::Opts;
use crate::paths::Paths;

/// kAFL's throughput on hardware VT-x, the reference figure.
pub const KAFL_EXECS_PER_S: f64 = 17_000.0;
/// Firecracker's snapshot restore, the reference figure, ms.
pub const FIRECRACKER_RESTORE_MS: (f64, f64) = (2.0, 4.0);
/// The dirty-page counts of the reset table.
const DIRTY_PAGES: [u32; 5] = [0, 16, 256, 1024, 4096];

pub fn run(p: &Paths, o: &Opts) -> Result<Value> {
    println!("7. Snapshots and fast reset");
    println!();
    let fuzz = fuzzing(p, o).context("fuzzing throughput")?;
    let resets = reset_latency(p, o).context("reset latency")?;
    let restore = restore(p, o).context("restore")?;
    Ok(json!({"fuzz": fuzz, "reset": resets, "restore": restore}))
}

fn fuzzing(p: &Paths, o: &Opts) -> Result<Value> {
    let seeds = snapshot::seeds(&p.fuzzme_seeds)?;
    let r = snapshot::fuzz(
        &p.binary,
        &p.fuzzme,
        &p.policies.join("fuzzer.wasm"),
        &seeds,
        &p.work,
        o.execs,
    )?;
    println!(
        "   Fuzzing: the fuzzer policy on the fuzzme guest, stop-on-crash=false, {} execs; each",
        o.execs
    );
    println!("   exec is a GET_INPUT and a DONE doorbell from CPL3 and a reset to the baseline");
    for line in [
        "   (a finding resets too). Rates from the events' t_us: fuzz-start to fuzz-stop, and",
        "   (steady) the first fuzz-stats to fuzz-stop.",
    ] {
        println!("{line}");
    }
    println!();
    println!(
        "   {:>8} {:>9} {:>12} {:>10} {:>15} {:>10} {:>10}",
        "execs", "findings", "start->stop", "execs/s", "steady execs/s", "wall", "us/exec"
    );
    let steady = r.steady_execs_per_s.unwrap_or(f64::NAN);
    println!(
        "   {:>8} {:>9} {:>10.0} ms {:>10.0} {:>15.0} {:>7.0} ms {:>10.1}",
        r.execs,
        r.findings,
        r.run_us / 1e3,
        r.execs_per_s,
        steady,
        r.wall_ms,
        1e6 / r.execs_per_s
    );
    println!(
        "   reference: kAFL about {:.0} execs/s on hardware VT-x; {:.2}x of it here. Not a target",
        KAFL_EXECS_PER_S,
        r.execs_per_s / KAFL_EXECS_PER_S
    );
    for line in [
        "   this machine can meet: on its software KVM backend CPL0 is emulated and every",
        "   exit is a user-space round trip of several us (section 1 measures it).",
    ] {
        println!("{line}");
    }
    if r.reason != "max-execs" {
        println!(
            "   note: the fuzzer stopped for {:?}, not max-execs",
            r.reason
        );
    }
    println!();
    Ok(json!({
        "execs": r.execs, "findings": r.findings, "reason": r.reason,
        "wall_ms": r.wall_ms, "run_us": r.run_us, "start_us": r.start_us,
        "execs_per_s": r.execs_per_s, "steady_execs_per_s": r.steady_execs_per_s,
        "us_per_exec": 1e6 / r.execs_per_s,
        "kafl_execs_per_s": KAFL_EXECS_PER_S,
    }))
}

fn reset_latency(p: &Paths, o: &Opts) -> Result<Value> {
    println!(
        "   Reset latency against dirty pages: the benchmark guest (entry 0x8020) stores into N pages"
    );
    println!(
        "   over and over (N = 0: entry 0x8018, port writes only); baseline, then {} resets over the",
        o.resets
    );
    for line in [
        "   control socket, each after one whole pass. us, median. total and copy: the VM's",
        "   report, from the held VM's reset starting to the vCPU handed its baseline state;",
        "   rest = total - copy (dirty logs, clock, devices); round trip: the client's, which",
        "   adds the socket and holding the vCPU (reading its state). The vCPU writes its",
        "   state back (about ten ioctls) as it resumes, after total is taken.",
    ] {
        println!("{line}");
    }
    println!();
    println!(
        "   {:>11} {:>9} {:>9} {:>9} {:>11} {:>12} {:>13} {:>8}",
        "dirty pages",
        "total",
        "copy",
        "rest",
        "round trip",
        "copy us/page",
        "total us/page",
        "gap ms"
    );
    let mut rows = Vec::new();
    for pages in DIRTY_PAGES {
        let run = snapshot::resets(&p.binary, &p.bench_bin, &p.work, pages, o.resets)
            .with_context(|| format!("{pages} dirty pages"))?;
        let col = |f: fn(&ResetSample) -> f64| {
            median(&run.samples.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        let total = col(|s| s.total_us);
        let copy = col(|s| s.copy_us);
        let rest = col(|s| s.total_us - s.copy_us);
        let rtt = col(|s| s.round_trip_us);
        let seen = col(|s| s.pages as f64);
        let per = |x: f64| {
            if pages == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", x / f64::from(pages))
            }
        };
        println!(
            "   {:>11} {:>9.0} {:>9.0} {:>9.0} {:>11.0} {:>12} {:>13} {:>8.0}",
            pages,
            total,
            copy,
            rest,
            rtt,
            per(copy),
            per(total),
            run.gap.as_secs_f64() * 1e3
        );
        rows.push(json!({
            "dirty_pages": pages, "pages_copied_median": seen,
            "total_us_median": total, "copy_us_median": copy, "rest_us_median": rest,
            "round_trip_us_median": rtt,
            "copy_us_per_page": (pages > 0).then(|| copy / f64::from(pages)),
            "total_us_per_page": (pages > 0).then(|| total / f64::from(pages)),
            "gap_ms": run.gap.as_secs_f64() * 1e3,
            "baseline_bytes": run.baseline_bytes,
            "samples": run.samples.iter().map(|s| json!({
                "pages": s.pages, "total_us": s.total_us, "copy_us": s.copy_us,
                "round_trip_us": s.round_trip_us,
            })).collect::<Vec<_>>(),
        }));
    }
    println!("   target: none given; these are figures.");
    println!();
    Ok(json!({"resets": o.resets, "rows": rows}))
}

/// Total bytes of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn restore(p: &Paths, o: &Opts) -> Result<Value> {
    let cache = p.fresh_cache("snapshot-cache", "serial")?;
    let cache_arg = cache.display().to_string();
    let native = vec!["--serial".to_string(), "native".to_string()];
    let serial = vec![
        "--policy".to_string(),
        p.policy("serial", ""),
        "--policy-cache".to_string(),
        cache_arg.clone(),
    ];
    let snap_native = p.work.join("snap-chatter-native");
    let snap_serial = p.work.join("snap-chatter-serial");
    snapshot::chatter_snapshot(&p.binary, &p.bench_bin, &p.work, &native, &snap_native)?;
    snapshot::chatter_snapshot(&p.binary, &p.bench_bin, &p.work, &serial, &snap_serial)?;
    let entry = format!("{:#x}", guest::ENTRY_CHATTER);
    let boot = |extra: &[String]| {
        let mut c = Command::new(&p.binary);
        c.arg("run")
            .arg("--guest")
            .arg(&p.bench_bin)
            .args(["--mode", "protected", "--entry", &entry])
            .args(extra);
        c
    };
    let restored = |dir: &Path, extra: &[&str]| {
        let mut c = Command::new(&p.binary);
        c.arg("run").arg("--restore").arg(dir).args(extra);
        c
    };
    type Make<'a> = Box<dyn Fn() -> Command + 'a>;
    let variants: Vec<(&str, Option<&Path>, Make)> = vec![
        (
            "cold boot, no policy (--serial native)",
            None,
            Box::new(|| boot(&native)),
        ),
        (
            "restore, no policy",
            Some(&snap_native),
            Box::new(|| restored(&snap_native, &[])),
        ),
        (
            "cold boot, serial policy (precompiled)",
            None,
            Box::new(|| boot(&serial)),
        ),
        (
            "restore, serial policy (precompiled)",
            Some(&snap_serial),
            Box::new(|| restored(&snap_serial, &["--policy-cache", &cache_arg])),
        ),
    ];
    let mut samples = vec![Vec::new(); variants.len()];
    for round in 0..o.startup_runs {
        for k in 0..variants.len() {
            let vi = (k + round) % variants.len();
            let (name, _, make) = &variants[vi];
            // The chatter never halts: killed at its first byte.
            let ms = procs::first_byte_ms(&mut make(), b'\n', Duration::ZERO)
                .with_context(|| name.to_string())?;
            samples[vi].push(ms);
        }
        eprint!(".");
    }
    eprintln!();
    println!(
        "   Restore: process start to the guest's first console byte, ms, median of {} runs; the",
        o.startup_runs
    );
    println!(
        "   benchmark guest's entry 0x8028 writes \"\\n\" to COM1 forever, booted cold or resumed"
    );
    println!("   from a snapshot taken while it runs (64 MiB of RAM, 8 KiB of it non-zero).");
    println!();
    println!(
        "   {:<42} {:>8} {:>8} {:>15}",
        "variant", "median", "min", "snapshot bytes"
    );
    let mut rows = Vec::new();
    for ((name, snap, _), s) in variants.iter().zip(&samples) {
        let m = median(s).unwrap_or(f64::NAN);
        let bytes = snap.map(dir_bytes);
        let line = format!(
            "   {:<42} {:>8.1} {:>8.1} {:>15}",
            name,
            m,
            min(s).unwrap_or(f64::NAN),
            bytes.map_or(String::new(), |b| b.to_string())
        );
        println!("{}", line.trim_end());
        rows.push(json!({
            "variant": name, "restore": snap.is_some(), "median_ms": m,
            "min_ms": min(s), "samples_ms": s, "snapshot_bytes": bytes,
        }));
    }
    let (lo, hi) = FIRECRACKER_RESTORE_MS;
    println!(
        "   reference: Firecracker restores a snapshot in about {lo:.0}-{hi:.0} ms; not a target"
    );
    println!();
    Ok(json!({"runs": o.startup_runs, "rows": rows, "firecracker_ms": [lo, hi]}))
}

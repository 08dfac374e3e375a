//! Section 4, start-up: process start to the guest's first console byte,
//! against `qemu-system-x86_64 -accel kvm` booting the same guest.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::stats::{median, min};
use wasmvisor_bench::{guest, procs};

use crate::opts::Opts;
use crate::paths::Paths;

pub fn run(p: &Paths, o: &Opts) -> Result<Value> {
    let rom = p.work.join("qemu-reset.bin");
    std::fs::write(&rom, guest::qemu_reset_rom())?;
    let qemu_ok = o.qemu
        && Command::new("qemu-system-x86_64")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let guest_path = p.bench_bin.display().to_string();
    let wv = |extra: &[String]| {
        let mut c = Command::new(&p.binary);
        c.args(["run", "--guest", &guest_path]).args(extra);
        c
    };
    let qemu = |machine: &str| {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "kvm", "-M", machine, "-m", "64M", "-nodefaults"])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-bios")
            .arg(&rom)
            .arg("-device")
            .arg(format!("loader,file={guest_path},addr=0x8000,force-raw=on"));
        c
    };
    type Make<'a> = Box<dyn Fn() -> Command + 'a>;
    // The precompiled variant reads a cache warmed once, here.
    let cache = p.fresh_cache("startup-cache", "serial")?;
    let cache_arg = cache.display().to_string();
    let mut variants: Vec<(&str, bool, Make)> = vec![
        (
            "wasmvisor, serial policy (precompiled)",
            false,
            Box::new(|| {
                wv(&[
                    "--policy".into(),
                    p.policy("serial", ""),
                    "--policy-cache".into(),
                    cache_arg.clone(),
                ])
            }),
        ),
        (
            "wasmvisor, serial policy (compiled at start)",
            false,
            Box::new(|| {
                wv(&[
                    "--policy".into(),
                    p.policy("serial", ""),
                    "--no-policy-cache".into(),
                ])
            }),
        ),
        (
            "wasmvisor, no policy (--serial native)",
            false,
            Box::new(|| wv(&["--serial".into(), "native".into()])),
        ),
    ];
    if qemu_ok {
        variants.push(("qemu -M microvm", true, Box::new(|| qemu("microvm"))));
        variants.push(("qemu -M pc", true, Box::new(|| qemu("pc"))));
    }
    let mut samples = vec![Vec::new(); variants.len()];
    for round in 0..o.startup_runs {
        for k in 0..variants.len() {
            let vi = (k + round) % variants.len();
            let (name, is_qemu, make) = &variants[vi];
            // wasmvisor halts and exits; QEMU sits in HLT until killed.
            let linger = if *is_qemu {
                Duration::ZERO
            } else {
                Duration::from_secs(10)
            };
            let ms = procs::first_byte_ms(&mut make(), b'b', linger)
                .with_context(|| format!("start-up of {name}"))?;
            samples[vi].push(ms);
        }
        eprint!(".");
    }
    eprintln!();
    let meds: Vec<f64> = samples
        .iter()
        .map(|s| median(s).unwrap_or(f64::NAN))
        .collect();
    let best_qemu = variants
        .iter()
        .zip(&meds)
        .filter(|((_, q, _), _)| *q)
        .map(|(_, m)| *m)
        .min_by(|a, b| a.total_cmp(b));
    println!(
        "4. Start-up: process start to the guest's first console byte, ms, median of {} runs",
        o.startup_runs
    );
    println!();
    println!(
        "   {:<46} {:>8} {:>8}  QEMU (fastest) / this",
        "variant", "median", "min"
    );
    let mut rows = Vec::new();
    for (((name, is_qemu, _), m), s) in variants.iter().zip(&meds).zip(&samples) {
        let ratio = best_qemu.filter(|_| !is_qemu).map(|q| q / m);
        let verdict = match ratio {
            Some(r) => format!(
                "{r:.2}x  (target >= 10x: {})",
                if r >= 10.0 { "met" } else { "missed" }
            ),
            None => String::new(),
        };
        let line = format!(
            "   {:<46} {:>8.1} {:>8.1}  {}",
            name,
            m,
            min(s).unwrap_or(f64::NAN),
            verdict
        );
        println!("{}", line.trim_end());
        rows.push(json!({"variant": name, "median_ms": m, "min_ms": min(s), "samples_ms": s, "qemu_over_this": ratio}));
    }
    if !qemu_ok {
        println!("   QEMU: not measured (qemu-system-x86_64 not installed, or --no-qemu)");
    }
    println!();
    let whole = start_to_finish(p, o, qemu_ok)?;
    Ok(json!({"runs": o.startup_runs, "rows": rows, "start_to_finish": whole}))
}

/// A VM's whole life, exec to exit, booting the same PVH kernel with
/// `--kernel` (which brings the in-kernel irqchip, and so the slow part
/// of the kernel's teardown) in wasmvisor and in QEMU microvm.
fn start_to_finish(p: &Paths, o: &Opts, qemu_ok: bool) -> Result<Value> {
    let kernel = p.pvh_exit.display().to_string();
    let wv = || {
        let mut c = Command::new(&p.binary);
        c.args(["run", "--kernel", &kernel, "--device", "debug-exit"]);
        c
    };
    let qemu = || {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "kvm", "-M", "microvm", "-m", "64M", "-nodefaults"])
            .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
            .args(["-kernel", &kernel])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
        c
    };
    type Make<'a> = Box<dyn Fn() -> Command + 'a>;
    let mut variants: Vec<(&str, Make)> = vec![("wasmvisor run --kernel", Box::new(wv))];
    if qemu_ok {
        variants.push(("qemu -M microvm -kernel", Box::new(qemu)));
    }
    let mut samples = vec![Vec::new(); variants.len()];
    for round in 0..o.startup_runs {
        for k in 0..variants.len() {
            let vi = (k + round) % variants.len();
            let (name, make) = &variants[vi];
            let ms = procs::exec_to_exit_ms(&mut make(), 1)
                .with_context(|| format!("start to finish of {name}"))?;
            samples[vi].push(ms);
        }
    }
    let meds: Vec<f64> = samples
        .iter()
        .map(|s| median(s).unwrap_or(f64::NAN))
        .collect();
    println!(
        "   start to finish (exec to exit), a 20-instruction PVH kernel, ms, median of {} runs",
        o.startup_runs
    );
    let mut rows = Vec::new();
    for (i, ((name, _), s)) in variants.iter().zip(&samples).enumerate() {
        let ratio = (i == 0 && meds.len() > 1).then(|| meds[1] / meds[0]);
        let line = format!(
            "   {:<46} {:>8.1} {:>8.1}  {}",
            name,
            meds[i],
            min(s).unwrap_or(f64::NAN),
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_default()
        );
        println!("{}", line.trim_end());
        rows.push(json!({"variant": name, "median_ms": meds[i], "min_ms": min(s), "samples_ms": s, "qemu_over_this": ratio}));
    }
    println!();
    Ok(json!(rows))
}

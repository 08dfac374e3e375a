//! wasmvisor's benchmark suite: `make bench`, or after `make build`,
//! `target/release/wasmvisor-bench [OPTIONS]`.
//!
//! One run measures, and prints side by side:
//!
//! 1. exit dispatch: ns per port, MSR and MMIO write exit, answered by a
//!    native Rust handler, by the no-op Wasm policy (called, and with its
//!    answers declared as constants) and by the real
//!    policies, with the ratio and the ns a policy adds;
//! 2. subscription filtering: exits that reach user space per million
//!    guest MSR and port accesses, with and without a subscription;
//! 3. hot-swap latency, request to active on every vCPU, with a
//!    precompiled (cached) component and with a cold one, on 1 and 2
//!    vCPUs;
//! 4. start-up, process start to the guest's first console byte, against
//!    `qemu-system-x86_64 -accel kvm` booting the same guest;
//! 5. the VMM's resident memory with 1 and 8 vCPUs and 0 to 3 policies;
//! 6. passthrough BAR access through the vfio-user test device: a BAR
//!    mapped as a memslot against the same BAR trapped for a policy.
//!
//! Nothing here asserts on timings. Results and the method are in
//! docs/performance.md; `--json FILE` also writes them as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::stats::{median, min};
use wasmvisor_bench::{bars, dispatch, guest, procs, swap};

const USAGE: &str = "\
usage: wasmvisor-bench [--count N] [--rounds R] [--startup-runs K] [--quick]
                       [--only dispatch,filter,swap,startup,memory,bars] [--no-qemu] [--json FILE]

  --count N         exits per dispatch phase and accesses per filter phase [50000]
  --rounds R        runs of each dispatch, filter and BAR variant (median taken) [5]
  --startup-runs K  start-ups of each variant (median taken) [10]
  --swaps S         swaps per hot-swap variant (median taken) [50]
  --quick           --count 5000 --rounds 2 --startup-runs 3 --swaps 10
  --only LIST       run only these sections
  --no-qemu         skip QEMU in the start-up section
  --variant NAME    dispatch: run only native, noop, const or real (for profiling)
  --json FILE       also write the results as JSON

Needs `make build` first (the release binary, policies and guests in target/).";

struct Opts {
    count: u32,
    rounds: usize,
    startup_runs: usize,
    swaps: usize,
    only: Option<Vec<String>>,
    qemu: bool,
    json: Option<PathBuf>,
    variant: Option<String>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            count: 50_000,
            rounds: 5,
            startup_runs: 10,
            swaps: 50,
            only: None,
            qemu: true,
            json: None,
            variant: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--count" => o.count = value()?.parse().context("--count")?,
                "--rounds" => o.rounds = value()?.parse().context("--rounds")?,
                "--startup-runs" => o.startup_runs = value()?.parse().context("--startup-runs")?,
                "--swaps" => o.swaps = value()?.parse().context("--swaps")?,
                "--quick" => {
                    o.count = 5_000;
                    o.rounds = 2;
                    o.startup_runs = 3;
                    o.swaps = 10;
                }
                "--only" => {
                    o.only = Some(value()?.split(',').map(str::to_string).collect());
                }
                "--no-qemu" => o.qemu = false,
                "--json" => o.json = Some(PathBuf::from(value()?)),
                "--variant" => o.variant = Some(value()?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown option `{other}`\n{USAGE}"),
            }
        }
        if o.count == 0 || o.rounds == 0 || o.startup_runs == 0 || o.swaps == 0 {
            bail!("--count, --rounds, --startup-runs and --swaps must be at least 1");
        }
        Ok(o)
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|s| s == section))
    }
}

/// Where the built artefacts are.
struct Paths {
    binary: PathBuf,
    policies: PathBuf,
    bench_bin: PathBuf,
    pci_bin: PathBuf,
    testdev: PathBuf,
    work: PathBuf,
}

impl Paths {
    fn find() -> Result<Paths> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("no workspace root")?
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let p = Paths {
            binary: target.join("release/wasmvisor"),
            policies: target.join("assets/policies"),
            bench_bin: target.join("assets/guests/bench.bin"),
            pci_bin: target.join("assets/guests/pci.bin"),
            testdev: target.join("release/wasmvisor-vfio-user-testdev"),
            work: target.join("bench"),
        };
        for f in [
            &p.binary,
            &p.bench_bin,
            &p.pci_bin,
            &p.testdev,
            &p.policies.join("noop.wasm"),
        ] {
            if !f.exists() {
                bail!("{} is missing: run `make build` first", f.display());
            }
        }
        std::fs::create_dir_all(&p.work)
            .with_context(|| format!("cannot create {}", p.work.display()))?;
        Ok(p)
    }

    /// An empty cache directory `dir` under the work directory, with
    /// `policy` precompiled into it by `wasmvisor policy precompile`.
    fn fresh_cache(&self, dir: &str, policy: &str) -> Result<PathBuf> {
        let cache = self.work.join(dir);
        let _ = std::fs::remove_dir_all(&cache);
        let out = Command::new(&self.binary)
            .args(["policy", "precompile", "--policy-cache"])
            .arg(&cache)
            .arg(self.policies.join(format!("{policy}.wasm")))
            .output()
            .context("cannot run wasmvisor policy precompile")?;
        if !out.status.success() {
            bail!(
                "policy precompile failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(cache)
    }

    fn policy(&self, name: &str, config: &str) -> String {
        let path = self.policies.join(format!("{name}.wasm"));
        if config.is_empty() {
            path.display().to_string()
        } else {
            format!("{}:{config}", path.display())
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({
        "cpu": cpu,
        "cores": cores,
        "kernel": kernel,
        "rustc": procs::version_line("rustc"),
        "qemu": procs::version_line("qemu-system-x86_64"),
        "loadavg_start": loadavg(),
    })
}

// ---------------------------------------------------------------------------
// 1. Exit dispatch

struct Variant {
    name: &'static str,
    what: &'static str,
    policies: Vec<String>,
    native_answers: bool,
}

const KINDS: [(&str, u8, u8); 3] = [("port", 1, 2), ("msr", 2, 3), ("mmio", 3, 4)];

fn dispatch_variants(p: &Paths) -> Vec<Variant> {
    let mmio = format!("{:#x}+{:#x}", guest::MMIO_BASE, guest::MMIO_LEN);
    let noop = p.policy(
        "noop",
        &format!(
            "ports={:#x},msrs={:#x},mmio={mmio}",
            guest::SCRATCH_PORT,
            guest::VIRT_MSR
        ),
    );
    let noop_const = format!("{noop},constant=true");
    vec![
        // The no-op policy stays loaded, so KVM's MSR filter (and so the
        // kernel's path for each exit) is the same as in the Wasm runs;
        // the native handler answers ahead of it and it is never called.
        Variant {
            name: "native",
            what: "a native Rust handler, ahead of the routes (noop loaded, never called)",
            policies: vec![noop.clone()],
            native_answers: true,
        },
        Variant {
            name: "noop",
            what: "policies/noop, one policy claiming all three",
            policies: vec![noop],
            native_answers: false,
        },
        Variant {
            name: "const",
            what: "policies/noop with constant=true: the same answers declared at init, given by the host without a call",
            policies: vec![noop_const],
            native_answers: false,
        },
        Variant {
            name: "real",
            what: "port: io-tracer then serial (scratch register); msr: msr-guard virtual MSR; mmio: regbank",
            policies: vec![
                p.policy("io-tracer", &format!("ports={:#x}", guest::SCRATCH_PORT)),
                p.policy("serial", ""),
                p.policy("msr-guard", &format!("msr.{:#x}=0", guest::VIRT_MSR)),
                p.policy("regbank", &format!("mmio={mmio}")),
            ],
            native_answers: false,
        },
    ]
}

fn bench_dispatch(p: &Paths, o: &Opts) -> Result<Value> {
    let image = guest::patched(&p.bench_bin, &p.work, o.count)?;
    let mut variants = dispatch_variants(p);
    if let Some(only) = &o.variant {
        variants.retain(|v| v.name == only);
        if variants.is_empty() {
            bail!("no dispatch variant `{only}`: use native, noop, const or real");
        }
        return profile_variant(&image, &variants[0], o);
    }
    // samples[variant][kind] = ns per exit, one per round
    let mut samples = vec![vec![Vec::new(); KINDS.len()]; variants.len()];
    let mut policy_ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..o.rounds {
        for k in 0..variants.len() {
            // Rotate the order so drift in host load spreads evenly.
            let vi = (k + round) % variants.len();
            let v = &variants[vi];
            let r =
                dispatch::run_guest(&image, guest::ENTRY_DISPATCH, &v.policies, v.native_answers)
                    .with_context(|| format!("dispatch variant {}", v.name))?;
            for (ki, (kind, from, to)) in KINDS.iter().enumerate() {
                let (ns, exits) = r.phase(*from, *to)?;
                if exits != u64::from(o.count) {
                    bail!(
                        "{} {kind}: {exits} exits reached user space, expected {}",
                        v.name,
                        o.count
                    );
                }
                samples[vi][ki].push(ns / exits as f64);
            }
            for ps in &r.stats.policies {
                let calls = ps.handled + ps.declined + ps.faults;
                if calls > 0 {
                    policy_ns
                        .entry(format!("{}/{}", v.name, ps.name))
                        .or_default()
                        .push(ps.time.as_nanos() as f64 / calls as f64);
                }
            }
        }
        eprint!(".");
    }
    eprintln!();

    let med = |vi: usize, ki: usize| median(&samples[vi][ki]).unwrap_or(f64::NAN);
    println!(
        "1. Exit dispatch: ns per exit, median of {} runs, {} exits per phase",
        o.rounds, o.count
    );
    for v in &variants {
        println!("   {:<7} {}", v.name, v.what);
    }
    println!();
    println!(
        "   {:<5} {:>9} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7}  target (<=1.05x, <=+150 ns)",
        "kind", "native", "noop", "ratio", "added", "const", "ratio", "added", "real", "ratio", "added"
    );
    let mut rows = Vec::new();
    for (ki, (kind, _, _)) in KINDS.iter().enumerate() {
        let n = med(0, ki);
        let (b, k, c) = (med(1, ki), med(2, ki), med(3, ki));
        let met = |x: f64| x / n <= 1.05 && x - n <= 150.0;
        let word = |x: f64| if met(x) { "met" } else { "missed" };
        println!(
            "   {:<5} {:>9.0} {:>9.0} {:>6.3}x {:>+7.0} {:>9.0} {:>6.3}x {:>+7.0} {:>9.0} {:>6.3}x {:>+7.0}  noop {}, const {}, real {}",
            kind,
            n,
            b,
            b / n,
            b - n,
            k,
            k / n,
            k - n,
            c,
            c / n,
            c - n,
            word(b),
            word(k),
            word(c),
        );
        rows.push(json!({
            "kind": kind,
            "native_ns": n, "noop_ns": b, "const_ns": k, "real_ns": c,
            "noop_ratio": b / n, "noop_added_ns": b - n,
            "const_ratio": k / n, "const_added_ns": k - n,
            "real_ratio": c / n, "real_added_ns": c - n,
            "native_min_ns": min(&samples[0][ki]), "noop_min_ns": min(&samples[1][ki]),
            "const_min_ns": min(&samples[2][ki]), "real_min_ns": min(&samples[3][ki]),
            "samples_ns": {"native": samples[0][ki], "noop": samples[1][ki], "const": samples[2][ki], "real": samples[3][ki]},
        }));
    }
    println!();
    println!(
        "   time inside the policy call (handle_exit, host side included), ns per call, median:"
    );
    let mut calls = serde_json::Map::new();
    for (name, v) in &policy_ns {
        let m = median(v).unwrap_or(f64::NAN);
        println!("     {name:<20} {m:>7.0}");
        calls.insert(name.clone(), json!(m));
    }
    println!();
    Ok(json!({"count": o.count, "rounds": o.rounds, "rows": rows, "policy_call_ns": calls}))
}

/// Runs one dispatch variant `rounds` times and prints its ns per exit;
/// meant to run under `perf record` or `perf stat`.
fn profile_variant(image: &Path, v: &Variant, o: &Opts) -> Result<Value> {
    for _ in 0..o.rounds {
        let r = dispatch::run_guest(image, guest::ENTRY_DISPATCH, &v.policies, v.native_answers)?;
        let line: Vec<String> = KINDS
            .iter()
            .map(|(kind, from, to)| {
                r.phase(*from, *to)
                    .map(|(ns, n)| format!("{kind} {:.0} ns", ns / n as f64))
                    .unwrap_or_else(|e| format!("{kind}: {e}"))
            })
            .collect();
        println!("{}: {}", v.name, line.join(", "));
    }
    Ok(json!(null))
}

// ---------------------------------------------------------------------------
// 2. Subscription filtering

fn bench_filter(p: &Paths, o: &Opts) -> Result<Value> {
    let image = guest::patched(&p.bench_bin, &p.work, o.count)?;
    let sub = vec![p.policy(
        "noop",
        &format!("msrs={:#x},ports={:#x}", guest::KVM_MSR, guest::FILTER_PORT),
    )];
    let variants: [(&str, Vec<String>); 2] = [("none", vec![]), ("noop", sub)];
    let phases = [
        (format!("WRMSR {:#x}", guest::KVM_MSR), 5u8, 6u8),
        (format!("OUT {:#x}", guest::FILTER_PORT), 6, 7),
    ];
    // [variant][phase] -> (exits per million, ns per access) samples
    let mut per_m = vec![vec![Vec::new(); 2]; 2];
    let mut ns = vec![vec![Vec::new(); 2]; 2];
    for round in 0..o.rounds {
        for k in 0..2 {
            let vi = (k + round) % 2;
            let r = dispatch::run_guest(&image, guest::ENTRY_FILTER, &variants[vi].1, false)
                .with_context(|| format!("filter variant {}", variants[vi].0))?;
            for (pi, (_, from, to)) in phases.iter().enumerate() {
                let (t, exits) = r.phase(*from, *to)?;
                per_m[vi][pi].push(exits as f64 * 1e6 / f64::from(o.count));
                ns[vi][pi].push(t / f64::from(o.count));
            }
        }
        eprint!(".");
    }
    eprintln!();
    println!(
        "2. Subscription filtering: exits reaching user space per million guest accesses ({} accesses, median of {} runs)",
        o.count, o.rounds
    );
    println!();
    println!(
        "   {:<12} {:<28} {:>16} {:>14}",
        "access", "subscription", "exits / 1M", "ns / access"
    );
    let mut rows = Vec::new();
    for (pi, (access, _, _)) in phases.iter().enumerate() {
        for (vi, (name, _)) in variants.iter().enumerate() {
            let e = median(&per_m[vi][pi]).unwrap_or(f64::NAN);
            let t = median(&ns[vi][pi]).unwrap_or(f64::NAN);
            let label = if *name == "none" {
                "none".to_string()
            } else {
                format!("noop claims {}", access.split(' ').nth(1).unwrap_or(""))
            };
            println!("   {access:<12} {label:<28} {e:>16.0} {t:>14.0}");
            rows.push(json!({"access": access, "subscription": name, "exits_per_million": e, "ns_per_access": t}));
        }
    }
    println!();
    Ok(json!({"count": o.count, "rounds": o.rounds, "rows": rows}))
}

// ---------------------------------------------------------------------------
// 4. Start-up

fn bench_startup(p: &Paths, o: &Opts) -> Result<Value> {
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
    Ok(json!({"runs": o.startup_runs, "rows": rows}))
}

// ---------------------------------------------------------------------------
// 3. Hot swap

fn bench_swap(p: &Paths, o: &Opts) -> Result<Value> {
    let ticker = p.bench_bin.with_file_name("ticker.bin");
    let cache = p.fresh_cache("policy-cache", "counter")?;
    println!(
        "3. Hot-swap latency: the counter policy swapped for a fresh copy of itself {} times",
        o.swaps
    );
    println!("   while the ticker guest exits on every vCPU; us, median (max); exits during:");
    println!(
        "   exits the guest made, all handled by the old generation, while the swap was prepared"
    );
    println!();
    println!(
        "   {:<6} {:<12} {:>16} {:>16} {:>16} {:>18} {:>14}",
        "vCPUs",
        "component",
        "request->active",
        "prepare",
        "switch",
        "client round trip",
        "exits during"
    );
    let mut rows = Vec::new();
    let mut medians = BTreeMap::new();
    for vcpus in [1u32, 2] {
        for cached in [true, false] {
            let (samples, label) = swap::measure(
                &p.binary,
                &ticker,
                &p.policies,
                &p.work,
                vcpus,
                cached.then_some(cache.as_path()),
                o.swaps,
            )
            .with_context(|| format!("hot swap, {vcpus} vCPU(s)"))?;
            let col = |f: fn(&swap::SwapSample) -> f64| {
                let xs: Vec<f64> = samples.iter().map(f).collect();
                let max = xs.iter().copied().fold(f64::NAN, f64::max);
                (median(&xs).unwrap_or(f64::NAN), max)
            };
            let total = col(|s| s.total_us);
            let prepare = col(|s| s.prepare_us);
            let switch = col(|s| s.switch_us);
            let rtt = col(|s| s.round_trip_us);
            let during = col(|s| s.exits_during);
            let cell = |(m, x): (f64, f64)| format!("{m:.0} ({x:.0})");
            let name = if cached { "precompiled" } else { "cold" };
            println!(
                "   {:<6} {:<12} {:>16} {:>16} {:>16} {:>18} {:>14}",
                vcpus,
                name,
                cell(total),
                cell(prepare),
                cell(switch),
                cell(rtt),
                cell(during)
            );
            medians.insert((vcpus, cached), total.0);
            rows.push(json!({
                "vcpus": vcpus, "component": name, "cache": label,
                "total_us_median": total.0, "total_us_max": total.1,
                "prepare_us_median": prepare.0, "switch_us_median": switch.0,
                "switch_us_max": switch.1, "round_trip_us_median": rtt.0,
                "exits_during_median": during.0,
            }));
        }
    }
    for vcpus in [1u32, 2] {
        if let (Some(hot), Some(cold)) = (medians.get(&(vcpus, true)), medians.get(&(vcpus, false)))
        {
            println!(
                "   {vcpus} vCPU(s): cold / precompiled = {:.1}x",
                cold / hot
            );
        }
    }
    println!();
    Ok(json!({"swaps": o.swaps, "rows": rows}))
}

// ---------------------------------------------------------------------------
// 5. Memory

fn bench_memory(p: &Paths) -> Result<Value> {
    let sets: [(&str, Vec<String>); 4] = [
        ("0 (native UART)", vec![]),
        ("1: serial", vec![p.policy("serial", "")]),
        (
            "2: + io-tracer",
            vec![
                p.policy("io-tracer", &format!("ports={:#x}", guest::SCRATCH_PORT)),
                p.policy("serial", ""),
            ],
        ),
        (
            "3: + msr-guard",
            vec![
                p.policy("io-tracer", &format!("ports={:#x}", guest::SCRATCH_PORT)),
                p.policy("serial", ""),
                p.policy("msr-guard", "watch=0x170-0x17f,allow=0x174"),
            ],
        ),
    ];
    println!("5. Memory: the wasmvisor process while every vCPU spins on port writes, MiB");
    println!("   RSS = anon (private: heap, Wasm code and instances, guest RAM) + file (pages of");
    println!(
        "   the binary and libraries: clean, shared with other processes). Guest RAM adds 8 KiB"
    );
    println!("   (the GDT page and the image page). '+anon': anon growth over the row above.");
    println!();
    println!(
        "   {:>5} {:<16} {:>7} {:>7} {:>7} {:>7} {:>11}",
        "vCPUs", "policies", "RSS", "peak", "anon", "file", "+anon"
    );
    let mut rows = Vec::new();
    for vcpus in [1u32, 8] {
        let mut prev: Option<f64> = None;
        for (n, (name, policies)) in sets.iter().enumerate() {
            let mut cmd = Command::new(&p.binary);
            cmd.args(["run", "--guest"])
                .arg(&p.bench_bin)
                .args(["--mode", "protected", "--entry"])
                .arg(format!("{:#x}", guest::ENTRY_SPIN))
                .args(["--vcpus", &vcpus.to_string()]);
            if policies.is_empty() {
                cmd.args(["--serial", "native"]);
            }
            for pol in policies {
                cmd.args(["--policy", pol]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start wasmvisor")?;
            std::thread::sleep(Duration::from_millis(1000));
            let sample = procs::memory_of(child.id());
            let alive = matches!(child.try_wait(), Ok(None));
            procs::interrupt(&mut child);
            let m = sample?;
            if !alive {
                bail!("wasmvisor exited before its memory was sampled ({vcpus} vCPUs, {name})");
            }
            let mib = |k: u64| k as f64 / 1024.0;
            let anon = mib(m.anon_kib);
            let per = prev.map_or(String::new(), |p| format!("{:+.2}", anon - p));
            prev = Some(anon);
            let line = format!(
                "   {:>5} {:<16} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>11}",
                vcpus,
                name,
                mib(m.rss_kib),
                mib(m.hwm_kib),
                anon,
                mib(m.file_kib),
                per
            );
            println!("{}", line.trim_end());
            rows.push(json!({
                "vcpus": vcpus, "policies": n, "set": name,
                "rss_kib": m.rss_kib, "hwm_kib": m.hwm_kib, "anon_kib": m.anon_kib,
                "file_kib": m.file_kib,
            }));
        }
    }
    println!();
    Ok(json!({"rows": rows}))
}

// ---------------------------------------------------------------------------
// 6. Passthrough BARs

fn bench_bars(p: &Paths, o: &Opts) -> Result<Value> {
    let server = bars::Server::start(&p.testdev, &p.work)?;
    let device = server.device();
    let (base, len) = bars::BAR2;
    let guard = p.policy("pci-guard", &format!("bar={base:#x}+{len:#x}"));
    let variants: [(&str, Vec<String>); 2] = [
        ("mapped (memslot, no policy)", vec![]),
        ("trapped (pci-guard on all of BAR 2)", vec![guard]),
    ];
    let mut runs: Vec<Vec<bars::BarRun>> = vec![Vec::new(); variants.len()];
    for round in 0..o.rounds {
        for k in 0..variants.len() {
            let vi = (k + round) % variants.len();
            let (name, policies) = &variants[vi];
            let r = bars::run_once(&p.binary, &p.pci_bin, &device, policies)
                .with_context(|| format!("BAR variant {name}"))?;
            runs[vi].push(r);
        }
        eprint!(".");
    }
    eprintln!();
    println!(
        "6. Passthrough BAR access: the pci guest's 32768 accesses to BAR 2 of the vfio-user test"
    );
    println!(
        "   device, mapped as a memslot or trapped for a policy; VM run time, median of {} runs",
        o.rounds
    );
    println!();
    println!(
        "   {:<38} {:>9} {:>11} {:>13}",
        "variant", "ms", "mmio exits", "bytes mapped"
    );
    let mut rows = Vec::new();
    let mut medians = Vec::new();
    for (vi, (name, _)) in variants.iter().enumerate() {
        let ms: Vec<f64> = runs[vi].iter().map(|r| r.wall_ms).collect();
        let med = median(&ms).unwrap_or(f64::NAN);
        // Exit counts and mapped bytes are the same in every run.
        let first = runs[vi][0];
        println!(
            "   {:<38} {:>9.1} {:>11} {:>13}",
            name, med, first.mmio_exits, first.mapped_bytes
        );
        medians.push(bars::BarRun {
            wall_ms: med,
            ..first
        });
        rows.push(json!({
            "variant": name, "median_ms": med, "samples_ms": ms,
            "mmio_exits": first.mmio_exits, "mapped_bar_bytes": first.mapped_bytes,
        }));
    }
    let ratio = medians[1].wall_ms / medians[0].wall_ms;
    let per = bars::per_trapped_access_us(&medians[0], &medians[1]);
    println!(
        "   trapped / mapped = {ratio:.1}x; one trapped access costs {per:.1} us (policy call and socket round trip)"
    );
    println!();
    Ok(
        json!({"runs": o.rounds, "rows": rows, "trapped_over_mapped": ratio, "us_per_trapped_access": per}),
    )
}

/// One line per target of the issue, from the sections that ran.
fn print_targets(results: &serde_json::Map<String, Value>) {
    println!("Targets");
    if let Some(rows) = results.get("dispatch").and_then(|d| d["rows"].as_array()) {
        let parts: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {:.2}x {:+.0} ns",
                    r["kind"].as_str().unwrap_or("?"),
                    r["noop_ratio"].as_f64().unwrap_or(f64::NAN),
                    r["noop_added_ns"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        let met = rows.iter().all(|r| {
            r["noop_ratio"].as_f64().is_some_and(|x| x <= 1.05)
                && r["noop_added_ns"].as_f64().is_some_and(|x| x <= 150.0)
        });
        println!(
            "   dispatch, no-op policy vs native, <= 1.05x and <= +150 ns per exit: {} ({})",
            if met { "met" } else { "missed" },
            parts.join(", ")
        );
        let parts: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {:.3}x {:+.0} ns",
                    r["kind"].as_str().unwrap_or("?"),
                    r["const_ratio"].as_f64().unwrap_or(f64::NAN),
                    r["const_added_ns"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        let met = rows.iter().all(|r| {
            r["const_ratio"].as_f64().is_some_and(|x| x <= 1.05)
                && r["const_added_ns"].as_f64().is_some_and(|x| x <= 150.0)
        });
        println!(
            "   dispatch, no-op policy with declared constants vs native, same target: {} ({})",
            if met { "met" } else { "missed" },
            parts.join(", ")
        );
    }
    if let Some(rows) = results.get("startup").and_then(|d| d["rows"].as_array()) {
        for r in rows {
            if let Some(x) = r["qemu_over_this"].as_f64() {
                println!(
                    "   start-up >= 10x faster than QEMU, {}: {} ({x:.2}x)",
                    r["variant"].as_str().unwrap_or("?"),
                    if x >= 10.0 { "met" } else { "missed" }
                );
            }
        }
    }
    if let Some(rows) = results.get("hot_swap").and_then(|d| d["rows"].as_array()) {
        for r in rows.iter().filter(|r| r["cache"] == "hit") {
            let t = r["total_us_median"].as_f64().unwrap_or(f64::NAN);
            println!(
                "   hot swap active within 1 ms, precompiled, {} vCPU(s): {} (median {t:.0} us)",
                r["vcpus"],
                if t <= 1000.0 { "met" } else { "missed" }
            );
        }
    }
    println!();
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("wasmvisor-bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let o = Opts::parse()?;
    let p = Paths::find()?;
    let mut results = serde_json::Map::new();
    let m = machine();
    println!("wasmvisor benchmark suite");
    println!(
        "machine: {} ({} cores), Linux {}, {}",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        m["rustc"].as_str().unwrap_or("rustc ?")
    );
    println!("load average at start: {}", loadavg());
    println!();
    if o.wants("dispatch") {
        results.insert("dispatch".into(), bench_dispatch(&p, &o)?);
    }
    if o.wants("filter") {
        results.insert("filter".into(), bench_filter(&p, &o)?);
    }
    if o.wants("swap") {
        results.insert("hot_swap".into(), bench_swap(&p, &o)?);
    }
    if o.wants("startup") {
        results.insert("startup".into(), bench_startup(&p, &o)?);
    }
    if o.wants("memory") {
        results.insert("memory".into(), bench_memory(&p)?);
    }
    if o.wants("bars") {
        results.insert("bars".into(), bench_bars(&p, &o)?);
    }
    print_targets(&results);
    let end = loadavg();
    println!("load average at end: {end}");
    let mut m = m;
    m["loadavg_end"] = json!(end);
    results.insert("machine".into(), m);
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&Value::Object(results))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

//! What a per-call deadline costs on the dispatch path, and how fast it
//! stops a policy that never returns: no deadline, epoch interruption (the
//! engine's default), fuel, and both. The numbers behind
//! `docs/adr/0002-call-deadlines.md`.
//!
//! ```sh
//! make policies
//! cargo bench -p wasmvisor-policy --bench deadline
//! ```
//!
//! Every measured call is `PolicyInstance::handle_exit` on a real policy
//! component built by `make policies`: the exit is converted, a fake vCPU
//! is lent to the store, the deadline armed, the component called and its
//! verdict converted back. Rounds of each variant are interleaved so that
//! drift on a busy machine spreads over all of them; the tables show the
//! median and the fastest round. Then: timeouts among short calls next to
//! busy threads, the cost of reading the thread's CPU clock, and how long
//! each mechanism takes to stop the hostile fixture's infinite loop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmvisor_exit::GuestRam;

use cpu_time::ThreadTime;
use vm_memory::GuestAddress;
use wasmvisor_exit::testing::{io_exit, FakeVcpu};
use wasmvisor_exit::{Capabilities, Direction, ExitEvent, Reg};
use wasmvisor_policy::{
    CallError, ConsoleSink, DeadlineMechanism, InstanceContext, Limits, PolicyEngine, PolicyImage,
    PolicyInstance, Shared, Verdict,
};

/// Fuel given to each call under (c) and (d). Generous for any handler
/// here (the heaviest, the 4096-range scan, needs well under 1 %); it sets
/// how long the spinning call runs before fuel stops it.
const FUEL_BUDGET: u64 = 100_000_000;

/// Interleaved rounds per workload and variant.
const ROUNDS: usize = 30;

/// Wall time one round aims at.
const ROUND_TIME: Duration = Duration::from_millis(10);

/// Spinning (and panicking) calls timed per variant.
const TRAPS: usize = 10;

/// Busy threads that play a loaded host (the machine has 2 cores).
const CONTENDERS: usize = 2;

/// How long each variant answers short calls next to them.
const CONTENDED_TIME: Duration = Duration::from_millis(1000);

/// Port ranges the io-tracer is configured with for the compute workload.
const SCAN_RANGES: u16 = 4096;

const VARIANTS: [(&str, DeadlineMechanism); 4] = [
    ("(a) none", DeadlineMechanism::Unbounded),
    ("(b) epoch", DeadlineMechanism::Epoch),
    (
        "(c) fuel",
        DeadlineMechanism::Fuel {
            budget: FUEL_BUDGET,
        },
    ),
    (
        "(d) epoch+fuel",
        DeadlineMechanism::EpochAndFuel {
            budget: FUEL_BUDGET,
        },
    ),
];

/// Ports of the hostile fixture (tests/fixtures/hostile, `port` module).
const GET_RAX: u16 = 0x11;
const PANIC: u16 = 0x12;
const SPIN: u16 = 0x13;

/// A vCPU whose RAX reads 0x42 and every other register 0.
fn vcpu() -> FakeVcpu {
    FakeVcpu::new().with_reg(Reg::Rax, 0x42)
}

/// A console that drops what it is given, so that millions of serial
/// writes do not pile up in memory.
struct NullConsole;

impl ConsoleSink for NullConsole {
    fn write(&self, bytes: &[u8]) {
        std::hint::black_box(bytes);
    }
}

/// Directory of the built policies: `WASMVISOR_POLICY_DIR`, or the
/// workspace's `target/wasm32-wasip2/policy`.
fn policy_dir() -> PathBuf {
    match std::env::var_os("WASMVISOR_POLICY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/policy"),
    }
}

fn io(port: u16, direction: Direction, data: u32) -> ExitEvent {
    io_exit(port, 1, direction, data)
}

/// One kind of exit answered by one policy.
struct Workload {
    name: &'static str,
    file: &'static str,
    config: Vec<(String, String)>,
    event: ExitEvent,
    /// What a correct answer looks like, checked once per instance.
    check: fn(&Verdict) -> bool,
}

fn workloads() -> Vec<Workload> {
    let handled = |v: &Verdict| matches!(v, Verdict::Handled(a) if a.len() == 1);
    let declined = |v: &Verdict| *v == Verdict::Decline;
    // Even ports 0, 2, ..., 8190: the odd port below matches none of
    // them, so every call scans the whole list and declines.
    let scan = (0..SCAN_RANGES)
        .map(|i| ("ports".to_string(), (i * 2).to_string()))
        .collect();
    vec![
        Workload {
            name: "noop: port read",
            file: "noop_policy.wasm",
            config: vec![],
            event: io(0x80, Direction::Read, 0),
            check: handled,
        },
        Workload {
            name: "serial: LSR read",
            file: "serial_policy.wasm",
            config: vec![],
            event: io(0x3fd, Direction::Read, 0),
            check: handled,
        },
        Workload {
            name: "serial: THR write (+console import)",
            file: "serial_policy.wasm",
            config: vec![],
            event: io(0x3f8, Direction::Write, u32::from(b'x')),
            check: handled,
        },
        Workload {
            name: "hostile: get-reg import",
            file: "hostile_fixture.wasm",
            config: vec![],
            event: io(GET_RAX, Direction::Read, 0),
            check: handled,
        },
        Workload {
            name: "io-tracer: scan 4096 ranges (compute)",
            file: "io_tracer_policy.wasm",
            config: scan,
            event: io(0x1fff, Direction::Write, 0),
            check: declined,
        },
    ]
}

/// An engine variant and the images it compiled.
struct Variant {
    name: &'static str,
    mechanism: DeadlineMechanism,
    /// Each image keeps its engine, and the engine's ticker, alive.
    images: Vec<(&'static str, PolicyImage)>,
}

impl Variant {
    fn image(&self, file: &str) -> &PolicyImage {
        &self
            .images
            .iter()
            .find(|(f, _)| *f == file)
            .expect("every file is loaded")
            .1
    }
}

fn context(shared: &Arc<Shared>, name: &str) -> InstanceContext {
    InstanceContext {
        policy_index: 0,
        policy_name: name.into(),
        vcpu_index: 0,
        vcpu_count: 1,
        memory: GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest RAM"),
        grants: Capabilities::default(),
        shared: Arc::clone(shared),
        protector: None,
        irq: Default::default(),
        snapshots: Default::default(),
    }
}

fn instance(
    variant: &Variant,
    shared: &Arc<Shared>,
    file: &str,
    config: &[(String, String)],
) -> PolicyInstance<FakeVcpu> {
    let mut p = variant
        .image(file)
        .instantiate(context(shared, file), &Limits::default())
        .unwrap_or_else(|e| panic!("{}: {file}: {e}", variant.name));
    p.init(config)
        .unwrap_or_else(|e| panic!("{}: {file}: {e}", variant.name));
    p
}

/// Median of `xs` (sorted in place).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Makes `n` calls; returns the wall time and how many timed out.
fn run(
    p: &mut PolicyInstance<FakeVcpu>,
    event: &ExitEvent,
    vcpu: &mut Option<FakeVcpu>,
    n: u64,
) -> (Duration, u64) {
    let mut failed = 0;
    let start = Instant::now();
    for _ in 0..n {
        match p.handle_exit(event, vcpu) {
            Ok(v) => {
                std::hint::black_box(v);
            }
            Err(CallError::Timeout) => failed += 1,
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    (start.elapsed(), failed)
}

/// One variant on one workload.
struct Sample {
    /// ns per call of the median round.
    median: f64,
    /// ns per call of the fastest round.
    best: f64,
    /// Calls made in the rounds.
    calls: u64,
    /// Calls that failed (timed out) in the rounds.
    failed: u64,
}

/// Runs `w` on each variant in interleaved rounds.
fn measure(variants: &[Variant], shared: &Arc<Shared>, w: &Workload) -> Vec<Sample> {
    let mut vcpu = Some(vcpu());
    let mut instances: Vec<_> = variants
        .iter()
        .map(|v| {
            let mut p = instance(v, shared, w.file, &w.config);
            let verdict = p.handle_exit(&w.event, &mut vcpu).expect("first call");
            assert!((w.check)(&verdict), "{}: {}: {verdict:?}", v.name, w.name);
            p
        })
        .collect();
    // Warm up, and size a round from the fastest variant's rate.
    let mut calls = 1u64;
    for p in &mut instances {
        let (t, _) = run(p, &w.event, &mut vcpu, 1000);
        let per_round = ROUND_TIME.as_secs_f64() / (t.as_secs_f64() / 1000.0);
        calls = calls.max(per_round as u64);
    }
    let mut rounds = vec![Vec::with_capacity(ROUNDS); variants.len()];
    let mut failed = vec![0; variants.len()];
    for round in 0..ROUNDS {
        // Rotate which variant goes first, so none always runs just after
        // another workload's set-up.
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let (t, f) = run(&mut instances[i], &w.event, &mut vcpu, calls);
            failed[i] += f;
            rounds[i].push(t.as_nanos() as f64 / calls as f64);
        }
    }
    rounds
        .iter_mut()
        .zip(failed)
        .map(|(r, failed)| {
            let median = median(r);
            Sample {
                median,
                best: r.iter().copied().fold(f64::INFINITY, f64::min),
                calls: calls * ROUNDS as u64,
                failed,
            }
        })
        .collect()
}

/// Prints one table row: `(a)`'s value, then each other value with its
/// ratio to `(a)`.
fn row(name: &str, values: impl Iterator<Item = f64>) {
    print!("{name:<38}");
    let mut base = None;
    for n in values {
        match base {
            None => {
                print!(" | {n:>16.1}");
                base = Some(n);
            }
            Some(b) => print!(" | {:>16}", format!("{n:.1} ({:.3})", n / b)),
        }
    }
    println!();
}

fn header(title: &str, variants: &[Variant]) {
    print!("{title:<38}");
    for v in variants {
        print!(" | {:>16}", v.name);
    }
    println!();
    println!("{}", "-".repeat(38 + variants.len() * 19));
}

/// Times `TRAPS` calls on `port` of the hostile fixture, each of which must
/// fail as `expect` says; returns the sorted wall and CPU times of the
/// calling thread, in milliseconds.
fn time_traps(
    variant: &Variant,
    shared: &Arc<Shared>,
    port: u16,
    expect: fn(&CallError) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut p = instance(variant, shared, "hostile_fixture.wasm", &[]);
    let mut vcpu = Some(vcpu());
    let event = io(port, Direction::Read, 1);
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..TRAPS)
        .map(|_| {
            let cpu = ThreadTime::now();
            let start = Instant::now();
            let err = p.handle_exit(&event, &mut vcpu).expect_err("must trap");
            let t = start.elapsed();
            let c = cpu.elapsed();
            assert!(expect(&err), "{}: port {port:#x}: {err}", variant.name);
            (t.as_secs_f64() * 1e3, c.as_secs_f64() * 1e3)
        })
        .unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall, cpu)
}

/// Busy threads that compete with the benchmark for the CPUs, like a
/// loaded host, until dropped.
struct Contention {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Contention {
    fn start(n: usize) -> Contention {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
                    }
                })
            })
            .collect();
        Contention { stop, threads }
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Calls `w` for `time` on each variant; returns the timeouts and calls.
fn timeouts(
    variants: &[Variant],
    shared: &Arc<Shared>,
    w: &Workload,
    time: Duration,
) -> Vec<(u64, u64)> {
    let mut vcpu = Some(vcpu());
    variants
        .iter()
        .map(|v| {
            let mut p = instance(v, shared, w.file, &w.config);
            let (mut failed, mut calls) = (0, 0);
            let start = Instant::now();
            while start.elapsed() < time {
                let (_, f) = run(&mut p, &w.event, &mut vcpu, 1000);
                failed += f;
                calls += 1000;
            }
            (failed, calls)
        })
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent;
    // only do the work when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("deadline: run with `cargo bench -p wasmvisor-policy --bench deadline`");
        return;
    }
    let dir = policy_dir();
    let files = [
        "noop_policy.wasm",
        "serial_policy.wasm",
        "io_tracer_policy.wasm",
        "hostile_fixture.wasm",
    ];
    let missing: Vec<_> = files.iter().filter(|f| !dir.join(f).is_file()).collect();
    if !missing.is_empty() {
        eprintln!(
            "deadline: missing {} in {}\n\
             build the policies with `make policies` from the workspace root, \
             or point WASMVISOR_POLICY_DIR at a directory holding them",
            missing
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            dir.display()
        );
        std::process::exit(2);
    }

    println!("machine: {}; load average {}", machine(), loadavg());
    println!(
        "deadline: {:?} (1 ms epoch ticks, confirmed by CPU time); fuel budget {FUEL_BUDGET} units/call; \
         median of {ROUNDS} interleaved rounds of ~{} ms",
        Limits::default().deadline,
        ROUND_TIME.as_millis()
    );
    let compile = Instant::now();
    let variants: Vec<Variant> = VARIANTS
        .iter()
        .map(|&(name, mechanism)| {
            let engine = PolicyEngine::with_deadline_mechanism(mechanism).expect("engine");
            let images = files
                .iter()
                .map(|&f| {
                    let image = PolicyImage::load(&engine, &dir.join(f))
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    (f, image)
                })
                .collect();
            Variant {
                name,
                mechanism,
                images,
            }
        })
        .collect();
    println!(
        "compiled {} components in {:.1} s\n",
        files.len() * variants.len(),
        compile.elapsed().as_secs_f64()
    );
    let shared = Arc::new(Shared::new(Arc::new(NullConsole), None).expect("shared"));

    // Per-call cost.
    let results: Vec<(Workload, Vec<Sample>)> = workloads()
        .into_iter()
        .map(|w| {
            let samples = measure(&variants, &shared, &w);
            (w, samples)
        })
        .collect();
    println!("handle_exit ns/call (ratio to (a))");
    header("median round", &variants);
    for (w, samples) in &results {
        row(w.name, samples.iter().map(|s| s.median));
    }
    println!();
    header("best round", &variants);
    for (w, samples) in &results {
        row(w.name, samples.iter().map(|s| s.best));
    }
    print!("\n{:<38}", "timeouts in the rounds / calls made");
    for (i, _) in variants.iter().enumerate() {
        let failed: u64 = results.iter().map(|(_, s)| s[i].failed).sum();
        let calls: u64 = results.iter().map(|(_, s)| s[i].calls).sum();
        print!(" | {:>16}", format!("{failed} / {calls}"));
    }
    println!("\n");

    // Short calls on a host with more runnable threads than cores.
    let contention = Contention::start(CONTENDERS);
    let counts = timeouts(&variants, &shared, &workloads()[0], CONTENDED_TIME);
    drop(contention);
    print!(
        "{:<38}",
        format!("same, {CONTENDERS} busy threads, noop, {CONTENDED_TIME:?}")
    );
    for (failed, calls) in counts {
        print!(" | {:>16}", format!("{failed} / {calls}"));
    }
    println!("\n");

    // What counting CPU time from the start of every call would add.
    let n = 100_000u32;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(ThreadTime::now());
    }
    println!(
        "one read of the thread's CPU time (CLOCK_THREAD_CPUTIME_ID): {:.1} ns\n",
        start.elapsed().as_nanos() as f64 / f64::from(n)
    );

    // Stopping a call that never returns.
    println!(
        "hostile spin (an infinite loop): {TRAPS} calls, each from the call to its \
         Err(Timeout); a failed call also\n\
         rebuilds the instance, which the panic port (trap at once, then rebuild) \
         times on its own. Wall and\n\
         CPU time of the calling thread, ms; 'busy' runs {CONTENDERS} busy threads \
         alongside"
    );
    println!(
        "{:<16} | {:<5} | {:>11} | {:>9} | {:>9} | {:>10} | {:>13}",
        "variant", "host", "wall median", "wall min", "wall max", "CPU median", "panic (wall)"
    );
    println!("{}", "-".repeat(16 + 5 + 11 + 9 + 9 + 10 + 13 + 18));
    for v in &variants {
        if v.mechanism == DeadlineMechanism::Unbounded {
            println!("{:<16} | never returns (not run)", v.name);
            continue;
        }
        for busy in [false, true] {
            let contention = busy.then(|| Contention::start(CONTENDERS));
            let (spin_wall, mut spin_cpu) =
                time_traps(v, &shared, SPIN, |e| *e == CallError::Timeout);
            let (mut panic_wall, mut panic_cpu) =
                time_traps(v, &shared, PANIC, |e| matches!(e, CallError::Trap(_)));
            drop(contention);
            let spin_median = median(&mut spin_wall.clone());
            let cpu_median = median(&mut spin_cpu);
            let fuel_rate = match v.mechanism {
                DeadlineMechanism::Fuel { budget } if !busy => {
                    let stop_us = (cpu_median - median(&mut panic_cpu)) * 1e3;
                    format!("  ({:.0} fuel units per CPU µs)", budget as f64 / stop_us)
                }
                _ => String::new(),
            };
            println!(
                "{:<16} | {:<5} | {:>11.2} | {:>9.2} | {:>9.2} | {:>10.2} | {:>13.3}{fuel_rate}",
                v.name,
                if busy { "busy" } else { "idle" },
                spin_median,
                spin_wall[0],
                spin_wall[spin_wall.len() - 1],
                cpu_median,
                median(&mut panic_wall),
            );
        }
    }
    println!("\nload average at the end: {}", loadavg());
}

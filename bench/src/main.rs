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
//!    mapped as a memslot against the same BAR trapped for a policy;
//! 7. snapshots and fast reset: the fuzzer's execs per second on the
//!    fuzzme guest (a reset per exec), reset latency against the number
//!    of dirty pages, and restoring a snapshot in a new process against a
//!    cold boot of the same guest.
//!
//! Nothing here asserts on timings. Results and the method are in
//! docs/performance.md; `--json FILE` also writes them as JSON.
//!
//! The command line is in [`opts`], the artefacts' paths in [`paths`], each
//! section in its module under [`sections`] (named as `--only` names it)
//! and the closing summary in [`targets`]; what the tests share with this
//! binary is the library (`src/lib.rs`).

#![forbid(unsafe_code)]

mod opts;
mod paths;
mod sections;
mod targets;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::procs;

use crate::opts::Opts;
use crate::paths::Paths;

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
        results.insert("dispatch".into(), sections::dispatch::run(&p, &o)?);
    }
    if o.wants("filter") {
        results.insert("filter".into(), sections::filter::run(&p, &o)?);
    }
    if o.wants("swap") {
        results.insert("hot_swap".into(), sections::swap::run(&p, &o)?);
    }
    if o.wants("startup") {
        results.insert("startup".into(), sections::startup::run(&p, &o)?);
    }
    if o.wants("memory") {
        results.insert("memory".into(), sections::memory::run(&p)?);
    }
    if o.wants("bars") {
        results.insert("bars".into(), sections::bars::run(&p, &o)?);
    }
    if o.wants("snapshot") {
        results.insert("snapshot".into(), sections::snapshot::run(&p, &o)?);
    }
    targets::print(&results);
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

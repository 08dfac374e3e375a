//! Section 3, hot-swap latency: request to active on every vCPU, with a
//! precompiled and with a cold component, on 1 and 2 vCPUs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::stats::median;
use wasmvisor_bench::swap;

use crate::opts::Opts;
use crate::paths::Paths;

pub fn run(p: &Paths, o: &Opts) -> Result<Value> {
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

//! Section 6, passthrough BAR access through the vfio-user test device: a
//! BAR mapped as a memslot against the same BAR trapped for a policy.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::bars;
use wasmvisor_bench::stats::median;

use crate::opts::Opts;
use crate::paths::Paths;

pub fn run(p: &Paths, o: &Opts) -> Result<Value> {
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

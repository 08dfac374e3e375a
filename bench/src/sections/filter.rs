//! Section 2, subscription filtering: exits that reach user space per
//! million guest MSR and port accesses, with and without a subscription.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::stats::median;
use wasmvisor_bench::{dispatch, guest};

use crate::opts::Opts;
use crate::paths::Paths;

pub fn run(p: &Paths, o: &Opts) -> Result<Value> {
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

//! The closing summary: one line per target of the issue.

use serde_json::Value;

/// One line per target of the issue, from the sections that ran.
pub fn print(results: &serde_json::Map<String, Value>) {
    println!("Targets");
    if let Some(rows) = results.get("dispatch").and_then(|d| d["rows"].as_array()) {
        let lines = [
            ("noop", "dispatch, no-op policy vs native, <= 1.05x and <= +150 ns per exit"),
            ("quick", "dispatch, no-op policy through the list-free answer (handle-exit-quick), same target"),
            ("const", "dispatch, no-op policy with declared constants vs native, same target"),
        ];
        for (key, what) in lines {
            let ratio = |r: &Value| r[format!("{key}_ratio")].as_f64();
            let added = |r: &Value| r[format!("{key}_added_ns")].as_f64();
            let parts: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {:.3}x {:+.0} ns",
                        r["kind"].as_str().unwrap_or("?"),
                        ratio(r).unwrap_or(f64::NAN),
                        added(r).unwrap_or(f64::NAN)
                    )
                })
                .collect();
            let met = rows.iter().all(|r| {
                ratio(r).is_some_and(|x| x <= 1.05) && added(r).is_some_and(|x| x <= 150.0)
            });
            println!(
                "   {what}: {} ({})",
                if met { "met" } else { "missed" },
                parts.join(", ")
            );
        }
    }
    if let Some(t) = results.get("dispatch").map(|d| &d["tracer"]) {
        if let Some(added) = t["observer_added_ns"].as_f64() {
            println!(
                "   an observer (io-tracer, @observe) adds <= +100 ns per observed exit: {} ({added:+.0} ns; called on the vCPU {:+.0} ns)",
                if added <= 100.0 { "met" } else { "missed" },
                t["sync_added_ns"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(rows) = results.get("startup").and_then(|d| d["rows"].as_array()) {
        if let Some(r) = rows.iter().find(|r| {
            r["variant"]
                .as_str()
                .is_some_and(|v| v.contains("(precompiled)"))
        }) {
            let m = r["median_ms"].as_f64().unwrap_or(f64::NAN);
            println!(
                "   start-up <= 2 ms to the first console byte, one precompiled policy: {} (median {m:.1} ms)",
                if m <= 2.0 { "met" } else { "missed" }
            );
        }
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
    if let Some(rows) = results.get("memory").and_then(|d| d["rows"].as_array()) {
        if let Some(r) = rows.iter().find(|r| r["vcpus"] == 1 && r["policies"] == 1) {
            let mib = r["rss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0;
            println!(
                "   RSS <= 8 MiB with one policy and one vCPU: {} ({mib:.1} MiB, of which {:.1} MiB file pages of the binary and libraries)",
                if mib <= 8.0 { "met" } else { "missed" },
                r["file_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0
            );
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
    if let Some(s) = results.get("snapshot") {
        let f = &s["fuzz"];
        println!(
            "   fuzzing throughput, fuzzme with resets (no target; kAFL ~{:.0}/s on hardware): report: {:.0} execs/s ({:.0} steady)",
            f["kafl_execs_per_s"].as_f64().unwrap_or(f64::NAN),
            f["execs_per_s"].as_f64().unwrap_or(f64::NAN),
            f["steady_execs_per_s"].as_f64().unwrap_or(f64::NAN)
        );
        if let Some(rows) = s["reset"]["rows"].as_array() {
            let parts: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} pages {:.0} us",
                        r["dirty_pages"],
                        r["total_us_median"].as_f64().unwrap_or(f64::NAN)
                    )
                })
                .collect();
            println!(
                "   reset latency (no target given): figures: {}",
                parts.join(", ")
            );
        }
        if let Some(rows) = s["restore"]["rows"].as_array() {
            let parts: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {:.1} ms",
                        r["variant"].as_str().unwrap_or("?"),
                        r["median_ms"].as_f64().unwrap_or(f64::NAN)
                    )
                })
                .collect();
            println!(
                "   restore to first console byte (no target; Firecracker 2-4 ms): report: {}",
                parts.join(", ")
            );
        }
    }
    println!();
}

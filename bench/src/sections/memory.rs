//! Section 5, memory: the VMM's resident memory with 1 and 8 vCPUs and 0
//! to 3 policies.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use wasmvisor_bench::{guest, procs};

use crate::paths::Paths;

pub fn run(p: &Paths) -> Result<Value> {
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

//! Hot-swap latency: a VM runs the ticker guest under the counter policy
//! and the policy is swapped for a fresh copy of itself, over the control
//! socket, while the guest keeps exiting. The VM reports for each swap
//! the time from the request to the new generation active on every vCPU,
//! split into preparing (load, instantiate and init on each vCPU) and
//! switching (holding every vCPU at an exit boundary, handing state over,
//! resuming); the client measures the round trip as well.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wasmvisor_vmm::control::{ControlClient, Request};

/// One swap's costs, microseconds.
#[derive(Debug, Clone, Copy)]
pub struct SwapSample {
    pub total_us: f64,
    pub prepare_us: f64,
    pub switch_us: f64,
    pub round_trip_us: f64,
    /// Exits the guest made (handled by the old generation) while the
    /// swap was prepared.
    pub exits_during: f64,
}

/// A VM serving a control socket, killed on drop.
struct Vm {
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The spec of a counter policy with generation label `g`.
fn counter(policies: &Path, g: usize) -> String {
    format!(
        "{}:generation={g},@grant=stop-vm",
        policies.join("counter.wasm").display()
    )
}

/// Runs `swaps` swaps on a VM with `vcpus` vCPUs; `cache` is the policy
/// cache directory, or `None` to compile every swap from the component.
pub fn measure(
    binary: &Path,
    ticker: &Path,
    policies: &Path,
    work: &Path,
    vcpus: u32,
    cache: Option<&Path>,
    swaps: usize,
) -> Result<(Vec<SwapSample>, String)> {
    let control: PathBuf = work.join(format!("swap-{vcpus}-{}.sock", cache.is_some()));
    let _ = std::fs::remove_file(&control);
    let mut cmd = Command::new(binary);
    cmd.arg("run")
        .arg("--guest")
        .arg(ticker)
        .args([
            "--vcpus",
            &vcpus.to_string(),
            "--policy",
            &counter(policies, 0),
        ])
        .arg("--control")
        .arg(&control);
    match cache {
        Some(dir) => cmd.arg("--policy-cache").arg(dir),
        None => cmd.arg("--no-policy-cache"),
    };
    let vm = Vm {
        child: cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start wasmvisor")?,
    };
    let started = Instant::now();
    while !control.exists() {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("no control socket after 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut client = ControlClient::connect(&control, Duration::from_secs(60))?;
    let mut samples = Vec::new();
    let mut cache_label = String::new();
    for g in 1..=swaps {
        // Let the guest run between swaps, as it would between edits.
        std::thread::sleep(Duration::from_millis(5));
        let request = Request {
            op: "swap".into(),
            name: Some("counter".into()),
            policy: Some(counter(policies, g)),
            ..Request::default()
        };
        let sent = Instant::now();
        let r = client.request(&request)?;
        let round_trip_us = sent.elapsed().as_secs_f64() * 1e6;
        if !r.ok {
            bail!("swap {g} refused: {}", r.error.unwrap_or_default());
        }
        let c = r.change.unwrap_or_default();
        let f = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
        samples.push(SwapSample {
            total_us: f("total_us"),
            prepare_us: f("prepare_us"),
            switch_us: f("switch_us"),
            round_trip_us,
            exits_during: f("exits_during"),
        });
        cache_label = c["cache"].as_str().unwrap_or_default().to_string();
    }
    drop(vm);
    let _ = std::fs::remove_file(&control);
    Ok((samples, cache_label))
}

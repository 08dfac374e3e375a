//! `wasmvisor replay FILE --policy P.wasm`: feeds a recording
//! (`run --record`) to a policy without a VM and shows where its answers
//! differ from the recorded ones. Exit code 0 when all are identical, 1
//! when any differ (like `diff`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use wasmvisor_kvm::Vcpu;
use wasmvisor_policy::{read_recording, recorded_policies, replay, Limits, PolicyEngine};

/// Differences printed in full; the rest are counted.
const SHOWN: usize = 20;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording made with `wasmvisor run --record FILE`.
    recording: PathBuf,
    /// The policy component to replay it against.
    #[arg(long, value_name = "P.wasm")]
    policy: PathBuf,
    /// Which recorded policy's calls to replay [default: the only one, or
    /// the one named like P.wasm].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Per-call deadline in milliseconds [default: 1000].
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    deadline_ms: u64,
}

pub fn run(args: ReplayArgs) -> Result<i32> {
    let (header, entries) = read_recording(&args.recording)?;
    let names = recorded_policies(&entries);
    let stem = args
        .policy
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match (&args.name, names.as_slice()) {
        (Some(n), _) if names.contains(n) => n.clone(),
        (Some(n), _) => bail!(
            "the recording has no policy `{n}`; it has: {}",
            names.join(", ")
        ),
        (None, []) => bail!("the recording has no policy calls"),
        (None, [only]) => only.clone(),
        (None, _) if names.contains(&stem) => stem,
        (None, _) => bail!(
            "the recording has several policies ({}); choose one with --name",
            names.join(", ")
        ),
    };
    if args.deadline_ms == 0 || args.deadline_ms > 60_000 {
        bail!(
            "--deadline-ms {} is out of range: use 1 to 60000",
            args.deadline_ms
        );
    }
    let limits = Limits {
        deadline: Duration::from_millis(args.deadline_ms),
        ..Limits::default()
    };
    let engine = PolicyEngine::new()?;
    let report = replay::<Vcpu>(&engine, &args.policy, &header, &entries, &name, &limits)?;
    let vcpus = report.vcpus.len();
    for d in report.differences.iter().take(SHOWN) {
        println!("{d}");
    }
    if report.differences.len() > SHOWN {
        println!(
            "... and {} more differences",
            report.differences.len() - SHOWN
        );
    }
    let summary = format!(
        "replayed {} init and {} exit calls of policy {name} on {vcpus} vCPU(s) against {}",
        report.inits,
        report.exits,
        args.policy.display()
    );
    if report.differences.is_empty() {
        println!("{summary}: all answers identical");
        Ok(0)
    } else {
        println!(
            "{summary}: {} of {} calls differ",
            report.differences.len(),
            report.inits + report.exits
        );
        Ok(1)
    }
}

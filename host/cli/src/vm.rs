//! `wasmvisor vm snapshot|baseline|reset|dump`: whole-VM operations on a
//! running VM through its control socket, and `vm dump --from DIR` from a
//! snapshot directory without a VM (`docs/snapshots.md`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use wasmvisor_vmm::control::{Reply, Request};

use crate::control::call;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The VM's control socket (`wasmvisor run --control PATH`).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// The directory to write the snapshot into (new or empty).
    dir: PathBuf,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The VM's control socket (`wasmvisor run --control PATH`).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The running VM's control socket (`wasmvisor run --control PATH`).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "from",
        conflicts_with = "from"
    )]
    control: Option<PathBuf>,
    /// Dump a snapshot directory instead of a running VM.
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// The ELF core file to write (must not exist).
    core: PathBuf,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

fn absolute(path: &std::path::Path) -> Result<String> {
    Ok(std::path::absolute(path)
        .with_context(|| format!("bad path {}", path.display()))?
        .display()
        .to_string())
}

/// Prints what the VM reported; a refusal becomes the error.
fn report(op: &str, reply: Reply, json: bool) -> Result<i32> {
    if json {
        println!("{}", serde_json::to_string(&reply)?);
    }
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "refused".into()));
    }
    if !json {
        let r = reply.report.unwrap_or_default();
        let f = |k: &str| r.get(k).cloned().unwrap_or_default();
        match op {
            "snapshot" | "baseline" => println!(
                "{op}: {} vCPU(s), {} bytes of RAM, in {} us",
                f("vcpus"),
                f("ram_bytes"),
                f("total_us")
            ),
            "reset" => println!(
                "reset {}: {} page(s) copied back in {} us ({} us in all)",
                f("resets"),
                f("pages"),
                f("copy_us"),
                f("total_us")
            ),
            _ => println!(
                "dump: {} ({} bytes, {} vCPU(s){}) in {} us",
                f("path").as_str().unwrap_or_default(),
                f("bytes"),
                f("vcpus"),
                if f("vmcoreinfo").as_bool() == Some(true) {
                    ", VMCOREINFO"
                } else {
                    ""
                },
                f("total_us")
            ),
        }
    }
    Ok(0)
}

pub fn snapshot(args: SnapshotArgs) -> Result<i32> {
    let request = Request {
        op: "snapshot".into(),
        path: Some(absolute(&args.dir)?),
        ..Default::default()
    };
    report("snapshot", call(&args.control, &request)?, args.json)
}

pub fn baseline(args: ResetArgs) -> Result<i32> {
    let request = Request {
        op: "baseline".into(),
        ..Default::default()
    };
    report("baseline", call(&args.control, &request)?, args.json)
}

pub fn reset(args: ResetArgs) -> Result<i32> {
    let request = Request {
        op: "reset".into(),
        ..Default::default()
    };
    report("reset", call(&args.control, &request)?, args.json)
}

pub fn dump(args: DumpArgs) -> Result<i32> {
    if let Some(dir) = &args.from {
        let r =
            wasmvisor_vmm::snapshot::dump_snapshot(dir, &args.core).map_err(anyhow::Error::msg)?;
        let reply = Reply {
            ok: true,
            report: Some(serde_json::to_value(r)?),
            ..Default::default()
        };
        return report("dump", reply, args.json);
    }
    let control = args
        .control
        .as_ref()
        .expect("clap requires --control or --from");
    let request = Request {
        op: "dump".into(),
        path: Some(absolute(&args.core)?),
        ..Default::default()
    };
    report("dump", call(control, &request)?, args.json)
}

//! `wasmvisor policy list|swap|load|unload`: clients of a running VM's
//! control socket, and `wasmvisor policy precompile`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use wasmvisor_policy::{ComponentCache, PolicyEngine, PolicyImage};
use wasmvisor_vmm::config::PolicySpec;
use wasmvisor_vmm::control::{ControlClient, Reply, Request};

/// How long a reply may take: a cold swap compiles first.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The VM's control socket (`wasmvisor run --control PATH`).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SwapArgs {
    /// The VM's control socket (`wasmvisor run --control PATH`).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// The loaded policy to replace (as `policy list` names it).
    name: String,
    /// The new policy: P.wasm[:key=value,...,@sandbox=value].
    policy: String,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The VM's control socket (`wasmvisor run --control PATH`).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// The policy to add at the end of the chain: P.wasm[:key=value,...].
    policy: String,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct UnloadArgs {
    /// The VM's control socket (`wasmvisor run --control PATH`).
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// The loaded policy to remove.
    name: String,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct PrecompileArgs {
    /// Policy components to precompile.
    #[arg(required = true, value_name = "P.wasm")]
    policies: Vec<PathBuf>,
    /// The cache directory [default: as `wasmvisor run` uses].
    #[arg(long, value_name = "DIR")]
    policy_cache: Option<PathBuf>,
}

/// Sends one request and reads its reply.
pub(crate) fn call(control: &Path, request: &Request) -> Result<Reply> {
    Ok(ControlClient::connect(control, REPLY_TIMEOUT)?.request(request)?)
}

/// The policy argument with its path made absolute: the VM resolves it
/// in its own working directory, not this one.
fn absolute_spec(arg: &str) -> Result<String> {
    PolicySpec::parse(arg)?;
    let (path, rest) = PolicySpec::split(arg);
    let abs = std::path::absolute(path).with_context(|| format!("bad policy path {path}"))?;
    Ok(format!("{}{rest}", abs.display()))
}

/// Prints a reply; a refusal becomes the error.
fn report(reply: Reply, json: bool) -> Result<i32> {
    if json {
        println!("{}", serde_json::to_string(&reply)?);
    }
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_else(|| "refused".into()));
    }
    if json {
        return Ok(0);
    }
    if let Some(change) = reply.change {
        let field = |k: &str| change.get(k).cloned().unwrap_or_default();
        println!(
            "generation {}: {} active on {} vCPU(s) in {} us (prepare {} us, switch {} us, cache {})",
            field("generation"),
            field("name").as_str().unwrap_or_default(),
            field("vcpus"),
            field("total_us"),
            field("prepare_us"),
            field("switch_us"),
            match field("cache").as_str() {
                Some("") | None => "-",
                Some(c) => c,
            },
        );
    }
    if let Some(policies) = reply.policies {
        println!("generation {}", reply.generation.unwrap_or_default());
        for p in policies {
            let field = |k: &str| p.get(k).cloned().unwrap_or_default();
            println!(
                "{:<16} gen {:<4} ports {:<3} msrs {:<3} mmio {:<3} cpuid {:<3} faults {:<4} {}",
                field("name").as_str().unwrap_or_default(),
                field("generation"),
                field("ports"),
                field("msrs"),
                field("mmio"),
                field("cpuid"),
                field("faults"),
                field("path").as_str().unwrap_or_default(),
            );
        }
    }
    Ok(0)
}

pub fn list(args: ListArgs) -> Result<i32> {
    let reply = call(
        &args.control,
        &Request {
            op: "list".into(),
            ..Default::default()
        },
    )?;
    report(reply, args.json)
}

pub fn swap(args: SwapArgs) -> Result<i32> {
    let request = Request {
        op: "swap".into(),
        name: Some(args.name),
        policy: Some(absolute_spec(&args.policy)?),
        ..Default::default()
    };
    report(call(&args.control, &request)?, args.json)
}

pub fn load(args: LoadArgs) -> Result<i32> {
    let request = Request {
        op: "load".into(),
        policy: Some(absolute_spec(&args.policy)?),
        ..Default::default()
    };
    report(call(&args.control, &request)?, args.json)
}

pub fn unload(args: UnloadArgs) -> Result<i32> {
    let request = Request {
        op: "unload".into(),
        name: Some(args.name),
        ..Default::default()
    };
    report(call(&args.control, &request)?, args.json)
}

pub fn precompile(args: PrecompileArgs) -> Result<i32> {
    let dir = match args.policy_cache.or_else(ComponentCache::default_dir) {
        Some(d) => d,
        None => bail!("no cache directory: pass --policy-cache DIR or set WASMVISOR_CACHE_DIR"),
    };
    let engine = PolicyEngine::new()?.with_cache(ComponentCache::open(&dir)?);
    for p in &args.policies {
        let entry = PolicyImage::precompile(&engine, p)?;
        println!("{} -> {}", p.display(), entry.display());
    }
    Ok(0)
}

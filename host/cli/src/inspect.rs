//! `wasmvisor policy inspect`: load a policy without a VM and show what it
//! is and what it subscribes to.

use std::sync::Arc;
use wasmvisor_exit::GuestRam;

use anyhow::{Context, Result};
use clap::Args;
use vm_memory::GuestAddress;
use wasmvisor_exit::{Capabilities, Subscriptions};
use wasmvisor_kvm::Vcpu;
use wasmvisor_policy::{
    CaptureConsole, InstanceContext, Limits, PolicyEngine, PolicyImage, PolicyInstance, Shared,
    HANDLER,
};
use wasmvisor_vmm::config::PolicySpec;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The policy component, optionally with config: P.wasm[:key=value,...].
    policy: String,
}

pub(crate) fn describe(s: &Subscriptions) -> Vec<String> {
    let mut out = Vec::new();
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|r| format!("{:#x}-{:#x}", r.start(), r.end()))
        .collect();
    let mmio: Vec<String> = s
        .mmio
        .iter()
        .map(|r| format!("{:#x}+{:#x}", r.base, r.len))
        .collect();
    let msrs: Vec<String> = s
        .msrs
        .iter()
        .map(|r| format!("{:#x}-{:#x}", r.start(), r.end()))
        .collect();
    let cpuid: Vec<String> = s.cpuid.iter().map(|l| format!("{l:#x}")).collect();
    let mut events = Vec::new();
    for (on, name) in [
        (s.events.hlt, "hlt"),
        (s.events.shutdown, "shutdown"),
        (s.events.debug, "debug"),
        (s.events.mem_violation, "mem-violation"),
    ] {
        if on {
            events.push(name);
        }
    }
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    out.push(format!("  ports:        {}", list(ports)));
    out.push(format!("  mmio:         {}", list(mmio)));
    out.push(format!("  msrs:         {}", list(msrs)));
    out.push(format!("  cpuid:        {}", list(cpuid)));
    out.push(format!(
        "  events:       {}",
        list(events.iter().map(|e| e.to_string()).collect())
    ));
    out.push(format!(
        "  capabilities: {}",
        list(
            s.capabilities
                .names()
                .iter()
                .map(|c| c.to_string())
                .collect()
        )
    ));
    out
}

/// An instance of `image` on no VM: one vCPU, a page of scratch memory,
/// every capability; its console and log go to the returned capture.
pub(crate) fn scratch_instance(
    image: &PolicyImage,
    limits: &Limits,
) -> Result<(PolicyInstance<Vcpu>, Arc<CaptureConsole>)> {
    let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x1000)])
        .context("cannot allocate scratch memory")?;
    let console = Arc::new(CaptureConsole::default());
    let shared = Arc::new(Shared::new(console.clone(), None)?.with_log(console.clone()));
    let ctx = InstanceContext {
        policy_index: 0,
        policy_name: image.name().to_string(),
        vcpu_index: 0,
        vcpu_count: 1,
        memory,
        grants: Capabilities::ALL,
        shared,
        protector: None,
        irq: Default::default(),
        snapshots: Default::default(),
    };
    Ok((image.instantiate::<Vcpu>(ctx, limits)?, console))
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let spec = PolicySpec::parse(&args.policy)?;
    let engine = PolicyEngine::new()?;
    let image = PolicyImage::load(&engine, &spec.path)?;
    let (mut inst, _) = scratch_instance(&image, &Limits::default())?;
    let info = inst.info()?;
    let subs = inst.init(&spec.config)?;
    println!("file:         {}", spec.path.display());
    println!("name:         {}", info.name);
    println!("version:      {}", info.version);
    println!("description:  {}", info.description);
    println!("exports:      {HANDLER}");
    println!("subscriptions:");
    for line in describe(&subs) {
        println!("{line}");
    }
    for problem in subs.unsupported() {
        println!("warning: {problem}");
    }
    Ok(())
}

//! `wasmvisor policy conformance P.wasm`: the conformance harness. Runs
//! the conformance guest (`examples/guests/conformance.S`) under the
//! policy on KVM and checks it against `docs/conformance.md`: the guest's
//! 16 checks, the emitted event, the exit count, and the config errors.
//! Exit code 0 when the policy conforms, 1 when it does not.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use wasmvisor_kvm::BootMode;
use wasmvisor_policy::CaptureConsole;
use wasmvisor_vmm::config::{GuestSpec, PolicySpec, SerialBackend, VmConfig};

use crate::assets;

/// The checks the guest makes.
const CHECKS: usize = 16;
/// Exits the policy handles in the guest's run.
const EXITS: u64 = 21;
/// The value the guest writes to the emit port (check 5).
const EMITTED: u64 = 0xabcd;

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// The policy, optionally with sandbox settings its runtime needs:
    /// P.wasm[:@memory=64M,@wasi=clocks,...]. `@grant=protect-memory` is
    /// added.
    policy: String,
}

struct Outcome {
    failures: usize,
}

impl Outcome {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            println!("ok     {what}");
        } else {
            self.failures += 1;
            println!("FAIL   {what}");
        }
    }
}

fn spec(base: &str, extra: &str) -> Result<PolicySpec> {
    let (path, rest) = PolicySpec::split(base);
    let mut text = format!("{path}:@grant=protect-memory");
    for part in [rest.trim_start_matches(':'), extra] {
        if !part.is_empty() {
            text.push(',');
            text.push_str(part);
        }
    }
    Ok(PolicySpec::parse(&text)?)
}

fn vm(policy: PolicySpec, events: Option<std::path::PathBuf>) -> Result<VmConfig> {
    let guest = assets::dir()?.join("guests/conformance.bin");
    let mut config = VmConfig::new(GuestSpec {
        path: guest,
        mode: Some(BootMode::Protected),
        load_addr: None,
        entry: None,
    });
    config.serial = SerialBackend::Native;
    config.policies = vec![policy];
    config.events = events;
    Ok(config)
}

pub fn run(args: ConformanceArgs) -> Result<i32> {
    let dir = tempdir()?;
    let events = dir.join("events.jsonl");
    let policy = spec(&args.policy, "")?;
    println!(
        "conformance of {} (docs/conformance.md)",
        policy.path.display()
    );
    let console = Arc::new(CaptureConsole::new());
    let report = wasmvisor_vmm::run(&vm(policy, Some(events.clone()))?, console.clone())
        .context("cannot run the conformance guest")?;
    let out = console.text();
    let mut o = Outcome { failures: 0 };
    for line in out.lines().filter(|l| l.starts_with("conformance: ")) {
        println!("guest  {}", &line["conformance: ".len()..]);
    }
    let passed = out
        .lines()
        .filter(|l| l.starts_with("conformance: ok "))
        .count();
    o.check(
        passed == CHECKS && !out.contains("FAIL"),
        &format!("the guest's checks: {passed}/{CHECKS} passed"),
    );
    o.check(
        report.outcome.exit_code() == 0,
        &format!("the run ends cleanly ({})", report.outcome.describe()),
    );
    let handled: u64 = report.stats.policies.iter().map(|p| p.handled).sum();
    o.check(
        handled == EXITS,
        &format!("the policy handled {handled} exits (want {EXITS})"),
    );
    let text = std::fs::read_to_string(&events).unwrap_or_default();
    let emitted = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "conformance")
        .map(|e| e["data"]["value"].as_u64())
        .collect::<Vec<_>>();
    o.check(
        emitted == [Some(EMITTED)],
        &format!("emits one `conformance` event with value {EMITTED} (got {emitted:?})"),
    );
    for (config, words) in [
        ("key=zzz", &["key"][..]),
        ("colour=red", &["unknown config key", "colour"][..]),
    ] {
        let bad = vm(spec(&args.policy, config)?, None)?;
        let refused = match wasmvisor_vmm::run(&bad, Arc::new(CaptureConsole::new())) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        };
        o.check(
            words.iter().all(|w| refused.contains(w)),
            &format!("init refuses {config}: {refused}"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    if o.failures == 0 {
        println!("result: conforms");
        Ok(0)
    } else {
        println!("result: {} check(s) failed", o.failures);
        Ok(1)
    }
}

/// A private scratch directory for the event stream.
fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("wasmvisor-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

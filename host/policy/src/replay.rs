//! Replaying a recording (`record.rs`) against a policy, without a VM:
//! each recorded vCPU gets its own instance, `init` and every exit are
//! delivered in the recorded order, every host import is answered from
//! the recording, and the policy's answers are compared with the recorded
//! ones.

use std::path::Path;
use std::sync::Arc;
use wasmvisor_exit::GuestRam;

use vm_memory::GuestAddress;
use wasmvisor_exit::{Capabilities, VcpuAccess};

use crate::bindings::wasmvisor::policy::types as wit;
use crate::engine::PolicyEngine;
use crate::error::{CallError, PolicyError};
use crate::image::PolicyImage;
use crate::instance::PolicyInstance;
use crate::limits::Limits;
use crate::record::{Entry, Header, Outcome};
use crate::sinks::{CaptureConsole, Shared};
use crate::tape::ImportCall;
use crate::InstanceContext;

/// One call whose replay differs from the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub vcpu: u32,
    /// What was called: `init`, or the exit (`seq 12 at rip 0x8031: ...`).
    pub call: String,
    pub recorded: String,
    pub replayed: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vcpu {} {}\n  recorded: {}\n  replayed: {}",
            self.vcpu, self.call, self.recorded, self.replayed
        )
    }
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// The recorded policy replayed.
    pub policy: String,
    pub vcpus: Vec<u32>,
    pub inits: usize,
    pub exits: usize,
    pub differences: Vec<Difference>,
}

/// The names of the policies a recording holds, in order of appearance.
pub fn recorded_policies(entries: &[Entry]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in entries.iter().filter_map(Entry::stream) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>"))
}

fn outcome_text<T: serde::Serialize>(o: &Outcome<T>) -> String {
    match o {
        Outcome::Returned(v) => json(v),
        Outcome::Failed(why) => format!("failed: {why}"),
    }
}

fn replayed<T: Clone>(r: &Result<T, CallError>) -> Outcome<T> {
    match r {
        Ok(v) => Outcome::Returned(v.clone()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Both failed, or both returned the same: failures compare by kind
/// only, since a trap's message carries the Wasm location, which moves
/// with every rebuild of the policy.
fn same<T: PartialEq>(a: &Outcome<T>, b: &Outcome<T>) -> bool {
    match (a, b) {
        (Outcome::Returned(x), Outcome::Returned(y)) => x == y,
        (Outcome::Failed(_), Outcome::Failed(_)) => true,
        _ => false,
    }
}

fn exit_label(e: &wit::ExitEvent) -> String {
    format!("seq {} at rip {:#x}: {}", e.seq, e.rip, json(&e.kind))
}

/// Replays the recorded calls of policy `name` against the component at
/// `path`. `V` is only the vCPU type the instances are built for: no vCPU
/// is ever lent, since every import is answered from the recording.
pub fn replay<V: VcpuAccess + Send + 'static>(
    engine: &PolicyEngine,
    path: &Path,
    header: &Header,
    entries: &[Entry],
    name: &str,
    limits: &Limits,
) -> Result<ReplayReport, PolicyError> {
    let image = PolicyImage::load(engine, path)?;
    // Nothing reads this memory: read-phys and friends come off the tape.
    let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x1000)])
        .map_err(|e| PolicyError::Engine(format!("cannot allocate scratch memory: {e}")))?;
    let console: Arc<CaptureConsole> = Arc::new(CaptureConsole::new());
    let shared = Arc::new(Shared::new(console.clone(), None)?.with_log(console));
    let mut instances: Vec<(u32, PolicyInstance<V>)> = Vec::new();
    let mut report = ReplayReport {
        policy: name.to_string(),
        ..ReplayReport::default()
    };
    for entry in entries {
        let Some((policy, vcpu)) = entry.stream() else {
            continue;
        };
        if policy != name {
            continue;
        }
        let at = match instances.iter().position(|(v, _)| *v == vcpu) {
            Some(at) => at,
            None => {
                let ctx = InstanceContext {
                    policy_index: 0,
                    policy_name: name.to_string(),
                    vcpu_index: vcpu,
                    vcpu_count: header.vcpus,
                    memory: memory.clone(),
                    grants: Capabilities::ALL,
                    shared: Arc::clone(&shared),
                    protector: None,
                    irq: Default::default(),
                    snapshots: Default::default(),
                };
                instances.push((vcpu, image.instantiate::<V>(ctx, limits)?));
                report.vcpus.push(vcpu);
                instances.len() - 1
            }
        };
        let inst = &mut instances[at].1;
        let (call, recorded, now, left) = match entry {
            Entry::Init {
                config,
                imports,
                outcome,
                ..
            } => {
                report.inits += 1;
                let (r, left) = inst.with_tape(imports.clone(), |i| i.init_raw(config));
                let now = replayed(&r);
                let differs = !same(outcome, &now);
                (
                    "init".to_string(),
                    (differs, outcome_text(outcome)),
                    outcome_text(&now),
                    left,
                )
            }
            Entry::HandleExit {
                event,
                imports,
                outcome,
                ..
            } => {
                report.exits += 1;
                let (r, left) = inst.with_tape(imports.clone(), |i| i.exit_call(*event, &mut None));
                let now = replayed(&r);
                let differs = !same(outcome, &now);
                (
                    exit_label(event),
                    (differs, outcome_text(outcome)),
                    outcome_text(&now),
                    left,
                )
            }
            Entry::End { .. } => continue,
        };
        let (differs, recorded) = recorded;
        if differs {
            report.differences.push(Difference {
                vcpu,
                call,
                recorded,
                replayed: now,
            });
        } else if let Some(missing) = left.first() {
            report.differences.push(Difference {
                vcpu,
                call,
                recorded: format!("{} import calls", left.len() + count_used(entry, &left)),
                replayed: format!(
                    "{} import calls; the first one not made: {}({})",
                    count_used(entry, &left),
                    missing.call,
                    missing.args
                ),
            });
        }
    }
    Ok(report)
}

/// How many of the entry's recorded import calls the replay made.
fn count_used(entry: &Entry, left: &[ImportCall]) -> usize {
    let total = match entry {
        Entry::Init { imports, .. } | Entry::HandleExit { imports, .. } => imports.len(),
        Entry::End { .. } => 0,
    };
    total - left.len()
}

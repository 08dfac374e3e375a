//! In-process runs of the benchmark guest through `wasmvisor_vmm`, the
//! same code path `wasmvisor run` takes, with a native handler that
//! timestamps the guest's phase markers and, for the native variant,
//! answers the measured exits itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use wasmvisor_exit::{Completion, Direction, ExitEvent, ExitKind};
use wasmvisor_policy::ConsoleSink;
use wasmvisor_vmm::config::{parse_mode, GuestSpec, PolicySpec, VmConfig};
use wasmvisor_vmm::outcome::VmOutcome;
use wasmvisor_vmm::stats::Stats;
use wasmvisor_vmm::ExitHook;

use crate::guest;

/// Discards the guest's console output.
struct NullConsole;

impl ConsoleSink for NullConsole {
    fn write(&self, _bytes: &[u8]) {}
}

/// One phase marker as the native handler saw it.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub phase: u8,
    pub at: Instant,
    /// The vCPU's exit sequence number of the marker exit.
    pub seq: u64,
}

/// The native handler: records markers, and with `answer` set handles
/// the port, MSR and MMIO writes of the dispatch phases in Rust (the
/// native baseline): writes are stored and dropped, reads return 0, as
/// the no-op policy does.
struct Probe {
    answer: bool,
    marks: Mutex<Vec<Mark>>,
    last_write: AtomicU64,
}

impl Probe {
    fn store(&self, direction: Direction, data: u64, completion: &mut Completion) -> bool {
        match direction {
            Direction::Read => completion.read = Some(0),
            Direction::Write => self.last_write.store(data, Ordering::Relaxed),
        }
        true
    }
}

impl ExitHook for Probe {
    fn handle(&self, event: &ExitEvent, completion: &mut Completion) -> bool {
        match event.kind {
            ExitKind::Io(io) if io.port == guest::MARKER_PORT => {
                let at = Instant::now();
                if let Ok(mut marks) = self.marks.lock() {
                    marks.push(Mark {
                        phase: io.data as u8,
                        at,
                        seq: event.seq,
                    });
                }
                true
            }
            ExitKind::Io(io) if self.answer && io.port == guest::SCRATCH_PORT => {
                self.store(io.direction, u64::from(io.data), completion)
            }
            ExitKind::Msr(m) if self.answer && m.index == guest::VIRT_MSR => {
                self.store(m.direction, m.value, completion)
            }
            ExitKind::Mmio(m)
                if self.answer
                    && (guest::MMIO_BASE..guest::MMIO_BASE + guest::MMIO_LEN).contains(&m.gpa) =>
            {
                self.store(m.direction, m.data, completion)
            }
            _ => false,
        }
    }
}

/// What one in-process run produced.
pub struct RunResult {
    pub marks: Vec<Mark>,
    pub stats: Stats,
}

impl RunResult {
    /// Time and exits between marker `from` and marker `to`: exits that
    /// reached user space in between, not counting the markers.
    pub fn phase(&self, from: u8, to: u8) -> Result<(f64, u64)> {
        let find = |p: u8| {
            self.marks
                .iter()
                .find(|m| m.phase == p)
                .copied()
                .with_context(|| format!("the guest never reached marker {p}"))
        };
        let (a, b) = (find(from)?, find(to)?);
        let ns = b.at.duration_since(a.at).as_nanos() as f64;
        Ok((ns, b.seq.saturating_sub(a.seq + 1)))
    }
}

/// Runs the benchmark guest at `entry` (protected mode) under `policies`.
pub fn run_guest(
    image: &Path,
    entry: u64,
    policies: &[String],
    native_answers: bool,
) -> Result<RunResult> {
    let guest = GuestSpec {
        path: PathBuf::from(image),
        mode: Some(parse_mode("protected")?),
        load_addr: None,
        entry: Some(entry),
    };
    let mut config = VmConfig::new(guest);
    config.policies = policies
        .iter()
        .map(|p| PolicySpec::parse(p))
        .collect::<Result<_, _>>()?;
    let probe = Arc::new(Probe {
        answer: native_answers,
        marks: Mutex::new(Vec::with_capacity(8)),
        last_write: AtomicU64::new(0),
    });
    let native: Arc<dyn ExitHook> = probe.clone();
    let report = wasmvisor_vmm::run_with_hook(&config, Arc::new(NullConsole), Some(native))
        .context("cannot run the benchmark guest")?;
    if report.outcome != VmOutcome::Halted {
        bail!(
            "the benchmark guest ended badly: {}",
            report.outcome.describe()
        );
    }
    let marks = probe.marks.lock().map(|m| m.clone()).unwrap_or_default();
    Ok(RunResult {
        marks,
        stats: report.stats,
    })
}

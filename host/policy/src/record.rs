//! Recordings (`wasmvisor run --record FILE`): every `init` and every exit
//! delivered to a policy, with the import calls it made and what they
//! returned, and the policy's answer. `wasmvisor replay` feeds them to a
//! policy without a VM (`replay.rs`). The format is JSON lines, versioned
//! by its first line, and documented in `docs/record-replay.md`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bindings::wasmvisor::policy::types;
use crate::tape::ImportCall;

/// The `format` of the first line.
pub const FORMAT: &str = "wasmvisor-recording";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The wasmvisor version that wrote it.
    pub wasmvisor: String,
    /// vCPUs of the recorded VM.
    pub vcpus: u32,
}

/// How a call into the policy ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome<T> {
    /// It returned this.
    Returned(T),
    /// It trapped, ran past its deadline or hit a limit.
    Failed(String),
}

/// One line after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum Entry {
    /// `init` on one vCPU's instance.
    Init {
        policy: String,
        vcpu: u32,
        config: Vec<(String, String)>,
        imports: Vec<ImportCall>,
        outcome: Outcome<Result<types::Subscriptions, String>>,
    },
    /// `handle-exit`.
    HandleExit {
        policy: String,
        vcpu: u32,
        event: types::ExitEvent,
        imports: Vec<ImportCall>,
        outcome: Outcome<types::Verdict>,
    },
    /// The last line: how many entries came before it. A recording
    /// without it was cut short.
    End { entries: u64 },
}

impl Entry {
    /// The policy and vCPU the entry belongs to (none for the end line).
    pub fn stream(&self) -> Option<(&str, u32)> {
        match self {
            Entry::Init { policy, vcpu, .. } | Entry::HandleExit { policy, vcpu, .. } => {
                Some((policy, *vcpu))
            }
            Entry::End { .. } => None,
        }
    }
}

/// A recording that cannot be read.
#[derive(Debug, Error)]
pub enum RecordingError {
    #[error("cannot open recording {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} is empty: not a wasmvisor recording")]
    Empty { path: String },
    #[error("{path} is not a wasmvisor recording (its first line is not a {FORMAT} header)")]
    NotARecording { path: String },
    #[error("{path} is recording format version {found}; this wasmvisor reads version {VERSION}")]
    Version { path: String, found: u32 },
    #[error("{path} line {line}: {reason} (the recording is corrupted or truncated)")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path} has no end line after its {entries} entries: the recording was cut short")]
    Truncated { path: String, entries: usize },
    #[error("{path}: the end line counts {said} entries but {found} came before it")]
    Count {
        path: String,
        said: u64,
        found: usize,
    },
    #[error("cannot write recording {path}: {reason}")]
    Write { path: String, reason: String },
}

/// Writes a recording; shared by every policy instance of a VM.
pub struct Recorder {
    path: String,
    out: Mutex<BufWriter<File>>,
    entries: AtomicU64,
    write_errors: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Creates `path` and writes the header for a VM of `vcpus` vCPUs.
    pub fn create(path: &Path, vcpus: u32) -> Result<Recorder, RecordingError> {
        let shown = path.display().to_string();
        let write_err = |e: std::io::Error| RecordingError::Write {
            path: shown.clone(),
            reason: e.to_string(),
        };
        let file = File::create(path).map_err(write_err)?;
        let mut out = BufWriter::new(file);
        let header = Header {
            format: FORMAT.to_string(),
            version: VERSION,
            wasmvisor: env!("CARGO_PKG_VERSION").to_string(),
            vcpus,
        };
        let line = serde_json::to_string(&header).map_err(|e| RecordingError::Write {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        writeln!(out, "{line}").map_err(write_err)?;
        Ok(Recorder {
            path: shown,
            out: Mutex::new(out),
            entries: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    /// Appends one entry. A failed write is counted, not fatal: the VM
    /// keeps running and [`Recorder::finish`] reports it.
    pub(crate) fn write(&self, entry: &Entry) {
        let ok = serde_json::to_string(entry).ok().is_some_and(|line| {
            let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            writeln!(out, "{line}").is_ok()
        });
        if ok {
            self.entries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the end line and flushes the file; returns the entries
    /// written before it.
    pub fn finish(&self) -> Result<u64, RecordingError> {
        let entries = self.entries.load(Ordering::Relaxed);
        let end = serde_json::to_string(&Entry::End { entries }).unwrap_or_default();
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        writeln!(out, "{end}")
            .and_then(|()| out.flush())
            .map_err(|e| RecordingError::Write {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        match self.write_errors.load(Ordering::Relaxed) {
            0 => Ok(entries),
            n => Err(RecordingError::Write {
                path: self.path.clone(),
                reason: format!("{n} entries could not be written"),
            }),
        }
    }
}

/// Reads a whole recording, checking the header and every line.
pub fn read_recording(path: &Path) -> Result<(Header, Vec<Entry>), RecordingError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|e| RecordingError::Open {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut lines = BufReader::new(file).lines();
    let line_err = |line: usize, reason: String| RecordingError::Line {
        path: shown.clone(),
        line,
        reason,
    };
    let first = match lines.next() {
        None => return Err(RecordingError::Empty { path: shown }),
        Some(l) => l.map_err(|e| line_err(1, e.to_string()))?,
    };
    let header: Header = match serde_json::from_str(&first) {
        Ok(h @ Header { .. }) if h.format == FORMAT => h,
        _ => return Err(RecordingError::NotARecording { path: shown }),
    };
    if header.version != VERSION {
        return Err(RecordingError::Version {
            path: shown,
            found: header.version,
        });
    }
    let mut entries = Vec::new();
    let mut end = None;
    for (i, line) in lines.enumerate() {
        let number = i + 2;
        let line = line.map_err(|e| line_err(number, e.to_string()))?;
        if end.is_some() {
            return Err(line_err(number, "a line after the end line".into()));
        }
        match serde_json::from_str(&line).map_err(|e| line_err(number, e.to_string()))? {
            Entry::End { entries } => end = Some(entries),
            entry => entries.push(entry),
        }
    }
    match end {
        None => Err(RecordingError::Truncated {
            path: shown,
            entries: entries.len(),
        }),
        Some(said) if said != entries.len() as u64 => Err(RecordingError::Count {
            path: shown,
            said,
            found: entries.len(),
        }),
        Some(_) => Ok((header, entries)),
    }
}

//! State shared by every policy instance of a VM: the console, the log,
//! the structured event stream (`--events`) and the per-policy counters.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::PolicyError;

/// One shared counter: every vCPU's instance of a policy adds to the same
/// one, through `counter-add` (by key) or a handle (`counter-handle`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl Counter {
    /// Adds `delta`, saturating, and returns the new value.
    pub fn add(&self, delta: i64) -> i64 {
        let previous = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add(delta))
            })
            .unwrap_or_else(|v| v);
        previous.saturating_add(delta)
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Most counters all policies of a VM may create together.
pub const MAX_COUNTERS: usize = 65_536;

/// Where console bytes (or log lines) go.
pub trait ConsoleSink: Send + Sync {
    /// Writes `bytes`. Failures are the sink's to handle: a policy's
    /// console write never fails.
    fn write(&self, bytes: &[u8]);
}

/// The host's standard output, flushed at each newline.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdoutConsole;

impl ConsoleSink for StdoutConsole {
    fn write(&self, bytes: &[u8]) {
        // Stdout is line-buffered: it flushes through the last newline.
        let _ = std::io::stdout().lock().write_all(bytes);
    }
}

/// The host's standard error (unbuffered).
#[derive(Debug, Default, Clone, Copy)]
pub struct StderrConsole;

impl ConsoleSink for StderrConsole {
    fn write(&self, bytes: &[u8]) {
        let _ = std::io::stderr().lock().write_all(bytes);
    }
}

/// Collects everything written, for tests.
#[derive(Debug, Default)]
pub struct CaptureConsole {
    bytes: Mutex<Vec<u8>>,
}

impl CaptureConsole {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ConsoleSink for CaptureConsole {
    fn write(&self, bytes: &[u8]) {
        self.lock().extend_from_slice(bytes);
    }
}

/// Host state shared by all policies and vCPUs of one VM.
pub struct Shared {
    console: Arc<dyn ConsoleSink>,
    log: Arc<dyn ConsoleSink>,
    start: Instant,
    events: Option<Mutex<LineWriter<File>>>,
    event_write_errors: AtomicU64,
    /// Events emitted, indexed by policy index.
    emitted: Mutex<Vec<u64>>,
    counters: Mutex<HashMap<(usize, String), Counter>>,
    recorder: Option<crate::record::Recorder>,
    /// What the host DMA-mapped for passthrough devices (`dma-mappings`).
    dma_mappings: Mutex<Vec<wasmvisor_exit::GpaRange>>,
    /// The guest kernel's profile (`kernel-*` imports), if the VM has one.
    kernel: Option<Arc<crate::kernel::KernelProfile>>,
}

impl Shared {
    /// Shared state writing the console to `console`, log lines to
    /// standard error and events (if `events_path` is given) to a new file
    /// there, one JSON object per line.
    pub fn new(
        console: Arc<dyn ConsoleSink>,
        events_path: Option<&Path>,
    ) -> Result<Shared, PolicyError> {
        let events = match events_path {
            Some(path) => {
                let file = File::create(path).map_err(|error| PolicyError::EventsFile {
                    path: path.display().to_string(),
                    error,
                })?;
                Some(Mutex::new(LineWriter::new(file)))
            }
            None => None,
        };
        Ok(Shared {
            console,
            log: Arc::new(StderrConsole),
            start: Instant::now(),
            events,
            event_write_errors: AtomicU64::new(0),
            emitted: Mutex::new(Vec::new()),
            counters: Mutex::new(HashMap::new()),
            recorder: None,
            dma_mappings: Mutex::new(Vec::new()),
            kernel: None,
        })
    }

    /// Gives the policies this kernel profile.
    pub fn with_kernel(mut self, kernel: Arc<crate::kernel::KernelProfile>) -> Shared {
        self.kernel = Some(kernel);
        self
    }

    /// The guest kernel's profile, if the VM has one.
    pub fn kernel(&self) -> Option<&Arc<crate::kernel::KernelProfile>> {
        self.kernel.as_ref()
    }

    /// Records every policy call into `recorder` (`--record`).
    pub fn with_recorder(mut self, recorder: crate::record::Recorder) -> Shared {
        self.recorder = Some(recorder);
        self
    }

    /// Records the ranges the host DMA-mapped for passthrough devices.
    pub fn set_dma_mappings(&self, ranges: Vec<wasmvisor_exit::GpaRange>) {
        *lock(&self.dma_mappings) = ranges;
    }

    /// The ranges the host DMA-mapped for passthrough devices.
    pub fn dma_mappings(&self) -> Vec<wasmvisor_exit::GpaRange> {
        lock(&self.dma_mappings).clone()
    }

    /// The recorder, when the VM is being recorded.
    pub fn recorder(&self) -> Option<&crate::record::Recorder> {
        self.recorder.as_ref()
    }

    /// Sends log lines to `log` instead of standard error.
    pub fn with_log(mut self, log: Arc<dyn ConsoleSink>) -> Shared {
        self.log = log;
        self
    }

    /// Writes policy output to the console.
    pub(crate) fn console_write(&self, bytes: &[u8]) {
        self.console.write(bytes);
    }

    /// Writes one finished log line (ending in a newline).
    pub(crate) fn log_line(&self, line: &str) {
        self.log.write(line.as_bytes());
    }

    /// Appends one event line and counts it. `json` is embedded as is if
    /// it is a JSON object, and as `{"raw": json}` otherwise.
    /// Records an event the host itself observed (`policy` names the
    /// source, e.g. `wasmvisor`); `json` must be a JSON object.
    pub fn emit_host(&self, source: &str, vcpu: u32, kind: &str, json: &str) {
        if self.events.is_some() {
            self.emit(usize::MAX, source, vcpu, kind, json);
        }
    }

    pub(crate) fn emit(
        &self,
        policy_index: usize,
        policy: &str,
        vcpu: u32,
        kind: &str,
        json: &str,
    ) {
        if policy_index != usize::MAX {
            let mut emitted = lock(&self.emitted);
            if emitted.len() <= policy_index {
                emitted.resize(policy_index + 1, 0);
            }
            emitted[policy_index] += 1;
        }
        let Some(events) = &self.events else {
            return;
        };
        let data = match serde_json::from_str::<&RawValue>(json) {
            Ok(raw) if raw.get().starts_with('{') => EventData::Object(raw),
            _ => EventData::Raw { raw: json },
        };
        let line = EventLine {
            schema: EVENT_SCHEMA,
            t_us: u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            vcpu,
            policy,
            kind,
            data,
        };
        let mut buf = match serde_json::to_vec(&line) {
            Ok(buf) => buf,
            Err(_) => {
                self.event_write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        buf.push(b'\n');
        if lock(events).write_all(&buf).is_err() {
            self.event_write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `delta` (saturating) to the counter `key` of policy
    /// `policy_index` and returns the new value; `None` if that would
    /// create a counter past [`MAX_COUNTERS`].
    pub(crate) fn counter_add(&self, policy_index: usize, key: String, delta: i64) -> Option<i64> {
        Some(self.counter_handle(policy_index, key)?.add(delta))
    }

    /// The counter `key` of policy `policy_index`, created at 0 if new;
    /// `None` past [`MAX_COUNTERS`].
    pub(crate) fn counter_handle(&self, policy_index: usize, key: String) -> Option<Counter> {
        let mut counters = lock(&self.counters);
        let full = counters.len() >= MAX_COUNTERS;
        match counters.entry((policy_index, key)) {
            Entry::Occupied(e) => Some(e.get().clone()),
            Entry::Vacant(_) if full => None,
            Entry::Vacant(e) => Some(e.insert(Counter::default()).clone()),
        }
    }

    /// Whether events are written anywhere (`--events`).
    pub fn events_enabled(&self) -> bool {
        self.events.is_some()
    }

    /// The value of a counter, if a policy ever touched it.
    pub fn counter(&self, policy_index: usize, key: &str) -> Option<i64> {
        lock(&self.counters)
            .iter()
            .find(|((p, k), _)| *p == policy_index && k == key)
            .map(|(_, v)| v.get())
    }

    /// Every counter of one policy, sorted by key.
    pub fn counters(&self, policy_index: usize) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = lock(&self.counters)
            .iter()
            .filter(|((p, _), _)| *p == policy_index)
            .map(|((_, k), v)| (k.clone(), v.get()))
            .collect();
        out.sort();
        out
    }

    /// Events emitted by one policy (counted with or without `--events`).
    pub fn events_emitted(&self, policy_index: usize) -> u64 {
        lock(&self.emitted).get(policy_index).copied().unwrap_or(0)
    }

    /// Event lines that could not be written to the events file.
    pub fn event_write_errors(&self) -> u64 {
        self.event_write_errors.load(Ordering::Relaxed)
    }

    /// Flushes the events file.
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.events {
            Some(events) => lock(events).flush(),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("events", &self.events.is_some())
            .finish_non_exhaustive()
    }
}

/// Locks `m`, ignoring poison: the protected data stays consistent
/// because no update here can panic half-way.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The version of the events file's format, written first on every line
/// as `schema`. Version 2 writes guest addresses and other 64-bit values
/// as `"0x…"` strings; version 1 (no `schema` field) wrote them as JSON
/// numbers, which lose precision above 2^53.
pub const EVENT_SCHEMA: u32 = 2;

/// One line of the events file.
#[derive(Serialize)]
struct EventLine<'a> {
    schema: u32,
    t_us: u64,
    vcpu: u32,
    policy: &'a str,
    kind: &'a str,
    data: EventData<'a>,
}

/// An event's payload as the policy gave it.
#[derive(Serialize)]
#[serde(untagged)]
enum EventData<'a> {
    Object(&'a RawValue),
    Raw { raw: &'a str },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn events_embed_objects_and_wrap_anything_else() {
        let dir = std::env::temp_dir().join(format!("wasmvisor-sinks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let shared = Shared::new(Arc::new(CaptureConsole::new()), Some(&path)).unwrap();
        shared.emit(0, "serial", 1, "tx", r#" {"byte": 65} "#);
        shared.emit(0, "serial", 1, "tx", "[1, 2]");
        shared.emit(1, "other", 0, "odd", "not json \"quoted\"");
        shared.flush().unwrap();
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 3);
        for line in &lines {
            assert_eq!(line["schema"], EVENT_SCHEMA);
        }
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.starts_with("{\"schema\":2,"), "{first}");
        assert_eq!(lines[0]["vcpu"], 1);
        assert_eq!(lines[0]["policy"], "serial");
        assert_eq!(lines[0]["kind"], "tx");
        assert_eq!(lines[0]["data"]["byte"], 65);
        assert!(lines[0]["t_us"].is_u64());
        assert_eq!(lines[1]["data"]["raw"], "[1, 2]");
        assert_eq!(lines[2]["data"]["raw"], "not json \"quoted\"");
        assert_eq!(shared.events_emitted(0), 2);
        assert_eq!(shared.events_emitted(1), 1);
        assert_eq!(shared.events_emitted(7), 0);
        assert_eq!(shared.event_write_errors(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_are_counted_without_a_file() {
        let shared = Shared::new(Arc::new(CaptureConsole::new()), None).unwrap();
        shared.emit(2, "p", 0, "k", "{}");
        assert_eq!(shared.events_emitted(2), 1);
    }

    #[test]
    fn counters_are_per_policy_and_saturate() {
        let shared = Shared::new(Arc::new(CaptureConsole::new()), None).unwrap();
        assert_eq!(shared.counter_add(0, "hits".into(), 2), Some(2));
        assert_eq!(shared.counter_add(0, "hits".into(), 3), Some(5));
        assert_eq!(shared.counter_add(1, "hits".into(), -1), Some(-1));
        assert_eq!(
            shared.counter_add(0, "big".into(), i64::MAX),
            Some(i64::MAX)
        );
        assert_eq!(shared.counter_add(0, "big".into(), 1), Some(i64::MAX));
        assert_eq!(shared.counter(0, "hits"), Some(5));
        assert_eq!(shared.counter(1, "hits"), Some(-1));
        assert_eq!(shared.counter(2, "hits"), None);
        assert_eq!(
            shared.counters(0),
            vec![("big".to_string(), i64::MAX), ("hits".to_string(), 5)]
        );
    }

    #[test]
    fn counters_are_capped() {
        let shared = Shared::new(Arc::new(CaptureConsole::new()), None).unwrap();
        for i in 0..MAX_COUNTERS {
            assert!(shared.counter_add(0, i.to_string(), 1).is_some());
        }
        assert_eq!(shared.counter_add(1, "new".into(), 1), None);
        assert_eq!(shared.counter_add(0, "7".into(), 1), Some(2));
    }

    #[test]
    fn console_and_log_go_to_their_sinks() {
        let console = Arc::new(CaptureConsole::new());
        let log = Arc::new(CaptureConsole::new());
        let shared = Shared::new(console.clone(), None)
            .unwrap()
            .with_log(log.clone());
        shared.console_write(b"hi\n");
        shared.log_line("line\n");
        assert_eq!(console.text(), "hi\n");
        assert_eq!(log.text(), "line\n");
    }
}

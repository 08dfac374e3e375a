//! A small mutational fuzzer as a policy: it feeds inputs to a guest that
//! speaks the doorbell convention (`wasmvisor_policy_sdk::doorbell`) and
//! puts the VM back to a snapshot between runs, so every input starts
//! from the same guest state at the cost of copying back the pages the
//! last run wrote.
//!
//! # Protocol
//!
//! The guest rings the doorbell with a 32-bit `out dx, eax` to `port`
//! (0x0ad0), EAX = `0x57420000 | n`, arguments in RBX, RCX, RSI, RDI
//! (arg0 to arg3). The fuzzer answers in RAX (status: 0 ok, 1 unknown
//! call, 2 bad argument, 3 bad address) and RBX (value):
//!
//! | n | call | what the fuzzer does | RBX |
//! |---|---|---|---|
//! | 1 | HELLO (arg0: guest ABI version) | notes the version (a warning unless 1) | 1, its version |
//! | 2 | SNAPSHOT | the first time: asks for the snapshot baseline, taken once this call is complete, and emits `fuzz-start`; later: nothing | 0 |
//! | 3 | GET_INPUT (arg0: buffer GVA, arg1: capacity) | writes the next input, at most `min(capacity, max-len)` bytes, at arg0 through the guest's page tables | its length |
//! | 4 | DONE (arg0: result code) | counts an exec and resets the VM to the baseline: the guest resumes right after SNAPSHOT and asks for the next input | none: the reset drops the answer |
//! | 5 | CRASH (arg0: vector, arg1: RIP, arg2: extra) | counts an exec and a finding, emits `finding`, then stops the VM or resets it (`stop-on-crash`) | none |
//! | 6 | LOG (arg0: text GVA, arg1: length) | logs the text (at most 1024 bytes) at info level | bytes logged |
//!
//! Any other call number is answered with status 1. Other accesses to the
//! port (reads, narrower writes, EAX without the magic) are declined.
//!
//! A `shutdown` exit once fuzzing started (after the baseline) is a
//! finding too: a triple fault or a KVM internal error, reported with the
//! exit's RIP, then a stop or a reset like a CRASH. An entry failure is
//! the host's problem, not the guest's: the fuzzer stops the VM dirty. A
//! shutdown before the baseline is declined (the host ends the run as
//! usual).
//!
//! Inputs: first every seed once, in order (cut to the capacity), then
//! mutants of corpus entries: 1 to 4 stacked mutations out of bit flips,
//! random bytes, interesting bytes (0x00, 0xff, 0x7f, 0x80), adding or
//! subtracting 1-16, inserting and deleting a byte, and splicing with
//! another entry. The corpus starts as the seeds (one empty input
//! without any) and grows by the one feedback a run gives: an input whose
//! DONE result code no earlier run returned joins it (up to 4096
//! entries), so a target that reports how far it got as its result code
//! is steered deeper. Randomness is a xorshift64* generator seeded by
//! `seed`: a run is reproducible.
//!
//! Every run that ends (DONE, CRASH, or a shutdown finding) is an exec.
//! After `max-execs` of them the fuzzer stops the VM cleanly.
//!
//! # Config
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `seeds` | none | seed inputs in hex (`0x` optional), separated by `+`; repeatable. Config values cannot hold commas, so `+` separates them |
//! | `seed` | `1` | the PRNG seed |
//! | `max-execs` | `1000000` | stop the VM cleanly after this many execs; `0`: never |
//! | `stop-on-crash` | `true` | stop the VM cleanly (exit code 0) after the first finding; `false`: reset and go on |
//! | `stats-every` | `1000` | emit `fuzz-stats` every this many execs; `0`: never |
//! | `port` | `0x0ad0` | the doorbell port |
//! | `max-len` | `256` | the longest input, 1 to 16384 bytes; no seed may be longer |
//!
//! # Grants
//!
//! The fuzzer asks for `set-registers` (the answers), `write-memory` (the
//! inputs) and `stop-vm`, and needs the operator's `@grant=snapshot` for
//! the baseline and the resets. Without it (or on a VM that cannot
//! snapshot) SNAPSHOT fails: the fuzzer logs one error line, emits
//! `fuzz-stop` and stops the VM dirty (exit code 4).
//!
//! ```text
//! wasmvisor run --guest target/assets/guests/fuzzme.elf \
//!     --policy 'target/assets/policies/fuzzer.wasm:seeds=57415645+46555a5a,max-execs=100000,@grant=set-registers,@grant=write-memory,@grant=stop-vm,@grant=snapshot' \
//!     --events fuzz.jsonl
//! ```
//!
//! # Events
//!
//! ```text
//! fuzz-start  {"seeds":S,"corpus":C,"seed":"0x1","max_len":L,"max_execs":M,"stop_on_crash":B,"guest_version":V|null}
//! finding     {"n":N,"kind":K,"vector":V|null,"rip":"0x…","extra":"0x…"|null,"input":"hex"|null,"len":L,"execs":E}
//! fuzz-stats  {"execs":E,"findings":F,"corpus":C}
//! fuzz-stop   {"reason":R,"execs":E,"findings":F,"corpus":C}
//! ```
//!
//! | kind | when | fields |
//! |---|---|---|
//! | `fuzz-start` | the baseline was granted (first SNAPSHOT) | `seeds` (how many), `corpus` (its size), **`seed`**, `max_len`, `max_execs`, `stop_on_crash`, `guest_version` (HELLO's arg0, `null` without HELLO) |
//! | `finding` | a CRASH call or a shutdown | `n` (1 for the first finding), `kind` (`crash`, `triple-fault` or `internal-error`), `vector` (CRASH's arg0, `null` for a shutdown), **`rip`** (CRASH's arg1, or the exit's RIP), **`extra`** (CRASH's arg2, `null` for a shutdown), `input` (the last input written, as hex without `0x`, ready for `seeds=`; `null` if none yet), `len` (its length), `execs` (including this run) |
//! | `fuzz-stats` | every `stats-every` execs | `execs`, `findings`, `corpus` |
//! | `fuzz-stop` | the fuzzer stops the VM | `reason` (`finding`, `max-execs` or `error`), `execs`, `findings`, `corpus` |
//!
//! Fields in **bold** are hex strings (`docs/events.md`). Policies have no
//! clock unless granted `@wasi=clocks`, so there is no rate: the host
//! stamps every event with `t_us`, and execs per second is the
//! difference of two `fuzz-stats` lines' `execs` over that of their
//! `t_us`.
//!
//! # State
//!
//! The fuzzer holds the snapshot grant, so a reset leaves its state
//! alone (`wit/policy.wit`): the counts, the corpus and the generator
//! carry on from run to run while the guest goes back. `save-state`
//! (called when the baseline is taken, and on a hot swap) returns 18
//! bytes: a format byte (1), a flags byte (bit 0: the baseline was
//! taken) and the exec and finding counts as little-endian u64s.
//! `restore-state` takes them (or nothing), so a new generation swapped
//! in mid-run keeps counting and can reset to the baseline the old one
//! took; the corpus and the generator start afresh from its own config.
//!
//! One instance serves one vCPU: the fuzzer expects the guest to run the
//! doorbell protocol on one vCPU.

#![forbid(unsafe_code)]

mod mutate;

use std::collections::BTreeSet;

use mutate::{mutate, Rng};
use wasmvisor_policy_sdk::doorbell::{self, Call};
use wasmvisor_policy_sdk::json::{self, Object};
use wasmvisor_policy_sdk::{
    export_policy, host, Capabilities, Config, EventSet, Exit, HostError, IoExit, Policy,
    ShutdownReason, Subscriptions, Verdict,
};

/// The defaults of the config keys.
const DEFAULT_SEED: u64 = 1;
const DEFAULT_MAX_EXECS: u64 = 1_000_000;
const DEFAULT_STATS_EVERY: u64 = 1000;
const DEFAULT_MAX_LEN: u64 = 256;
/// The largest `max-len`: an input's hex in a `finding` event stays well
/// inside the host's 64 KiB payload limit.
const MAX_MAX_LEN: u64 = 16 * 1024;
/// The most corpus entries; past it new result codes add nothing.
const MAX_CORPUS: usize = 4096;
/// The most bytes of one LOG call that are logged.
const MAX_LOG: u64 = 1024;
/// The `save-state` format.
const STATE_VERSION: u8 = 1;
const STATE_LEN: usize = 18;
const FLAG_BASELINE: u8 = 1;

const KEYS: [&str; 7] = [
    "seeds",
    "seed",
    "max-execs",
    "stop-on-crash",
    "stats-every",
    "port",
    "max-len",
];

/// What the operator configured.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    port: u16,
    seed: u64,
    max_execs: u64,
    stop_on_crash: bool,
    stats_every: u64,
    max_len: usize,
}

/// What a finding reports beyond the input.
#[derive(Debug, Clone, Copy)]
struct Finding {
    kind: &'static str,
    vector: Option<u64>,
    rip: u64,
    extra: Option<u64>,
}

#[derive(Debug)]
struct Fuzzer {
    settings: Settings,
    rng: Rng,
    /// The seeds first, then the inputs that produced a new result code.
    corpus: Vec<Vec<u8>>,
    /// How many of the corpus entries are configured seeds.
    seeds: usize,
    /// The next seed to run as is; `seeds` once they all ran.
    next_seed: usize,
    /// DONE result codes seen so far.
    codes: BTreeSet<u64>,
    /// The last input written, and whether it was a seed as given.
    last: Option<Vec<u8>>,
    last_is_seed: bool,
    /// HELLO's arg0.
    guest_version: Option<u64>,
    /// The baseline was granted: DONE and findings can reset.
    baseline: bool,
    execs: u64,
    findings: u64,
}

/// `bytes` as lowercase hex, no prefix: the `seeds=` format.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// One seed in hex, `0x` optional.
fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if !digits.len().is_multiple_of(2) {
        return Err(format!("`{t}` has an odd number of hex digits"));
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| format!("`{t}` is not hex"))
    };
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

impl Fuzzer {
    fn from_config(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&KEYS)?;
        let max_len = config.u64_or("max-len", DEFAULT_MAX_LEN)?;
        if !(1..=MAX_MAX_LEN).contains(&max_len) {
            return Err(format!(
                "config key `max-len`: {max_len} is not between 1 and {MAX_MAX_LEN}"
            ));
        }
        let max_len = max_len as usize;
        let mut corpus = Vec::new();
        for part in config.all("seeds").flat_map(|v| v.split('+')) {
            if part.trim().is_empty() {
                continue;
            }
            let n = corpus.len() + 1;
            let seed = from_hex(part).map_err(|e| format!("config key `seeds`: seed {n}: {e}"))?;
            if seed.len() > max_len {
                return Err(format!(
                    "config key `seeds`: seed {n} is {} bytes, longer than max-len ({max_len})",
                    seed.len()
                ));
            }
            corpus.push(seed);
        }
        let seeds = corpus.len();
        if corpus.is_empty() {
            corpus.push(Vec::new());
        }
        let settings = Settings {
            port: config.u16("port")?.unwrap_or(doorbell::PORT),
            seed: config.u64_or("seed", DEFAULT_SEED)?,
            max_execs: config.u64_or("max-execs", DEFAULT_MAX_EXECS)?,
            stop_on_crash: config.bool("stop-on-crash")?.unwrap_or(true),
            stats_every: config.u64_or("stats-every", DEFAULT_STATS_EVERY)?,
            max_len,
        };
        let subscriptions = Subscriptions::new()
            .port(settings.port)
            .events(EventSet::SHUTDOWN)
            .capabilities(
                Capabilities::SET_REGISTERS | Capabilities::WRITE_MEMORY | Capabilities::STOP_VM,
            );
        let fuzzer = Fuzzer {
            rng: Rng::new(settings.seed),
            settings,
            corpus,
            seeds,
            next_seed: 0,
            codes: BTreeSet::new(),
            last: None,
            last_is_seed: false,
            guest_version: None,
            baseline: false,
            execs: 0,
            findings: 0,
        };
        Ok((fuzzer, subscriptions))
    }

    /// The next input, at most `cap` bytes: the seeds in order, then
    /// mutants of random corpus entries.
    fn next_input(&mut self, cap: usize) -> (Vec<u8>, bool) {
        if self.next_seed < self.seeds {
            let seed = &self.corpus[self.next_seed];
            self.next_seed += 1;
            return (seed[..seed.len().min(cap)].to_vec(), true);
        }
        let base = self.rng.below(self.corpus.len());
        let other = self.rng.below(self.corpus.len());
        let input = mutate(&self.corpus[base], &self.corpus[other], cap, &mut self.rng);
        (input, false)
    }

    /// `json` with the exec, finding and corpus counts added.
    fn counts(&self, json: Object) -> String {
        json.u64("execs", self.execs)
            .u64("findings", self.findings)
            .u64("corpus", self.corpus.len() as u64)
            .finish()
    }

    /// Ends the run cleanly (`finding`, `max-execs`).
    fn finish(&self, reason: &str, why: String) -> Verdict {
        host::emit(
            "fuzz-stop",
            &self.counts(Object::new().str("reason", reason)),
        );
        host::info(&why);
        Verdict::stop(true, why)
    }

    /// Ends the run dirty: the fuzzer cannot go on.
    fn fail(&self, why: String) -> Verdict {
        host::error(&why);
        host::emit(
            "fuzz-stop",
            &self.counts(Object::new().str("reason", "error")),
        );
        Verdict::stop(false, why)
    }

    /// A run ended: count it and emit stats when due.
    fn count_exec(&mut self) {
        self.execs += 1;
        let every = self.settings.stats_every;
        if every != 0 && self.execs.is_multiple_of(every) {
            host::emit("fuzz-stats", &self.counts(Object::new()));
        }
    }

    /// After a run: stop at `max-execs`, or reset to the baseline for the
    /// next one. A reset drops the actions answering the exit, so the
    /// verdict is a plain `resume` (valid for a shutdown exit too).
    fn next_run(&mut self) -> Verdict {
        let max = self.settings.max_execs;
        if max != 0 && self.execs >= max {
            return self.finish(
                "max-execs",
                format!(
                    "fuzzer: {} execs, {} findings: max-execs reached",
                    self.execs, self.findings
                ),
            );
        }
        if !self.baseline {
            return self.fail(
                "fuzzer: a run ended before SNAPSHOT: there is no baseline to reset to".into(),
            );
        }
        match host::snapshot_reset() {
            Ok(()) => Verdict::resume(),
            Err(e) => self.fail(format!("fuzzer: snapshot-reset failed: {}", e.name())),
        }
    }

    fn hello(&mut self, version: u64) -> Verdict {
        if version != doorbell::VERSION {
            host::warn(&format!(
                "fuzzer: the guest speaks doorbell version {version}, the fuzzer {}",
                doorbell::VERSION
            ));
        }
        self.guest_version = Some(version);
        doorbell::ok(doorbell::VERSION)
    }

    fn snapshot(&mut self) -> Verdict {
        if self.baseline {
            return doorbell::ok(0);
        }
        if let Err(e) = host::snapshot_baseline() {
            let hint = match e {
                HostError::NotGranted => " (run the fuzzer with @grant=snapshot)",
                HostError::Unsupported => " (this VM cannot snapshot: passed-through devices?)",
                _ => "",
            };
            return self.fail(format!(
                "fuzzer: snapshot-baseline failed: {}{hint}",
                e.name()
            ));
        }
        self.baseline = true;
        let s = &self.settings;
        let version = self
            .guest_version
            .map_or_else(|| "null".to_string(), |v| v.to_string());
        let json = Object::new()
            .u64("seeds", self.seeds as u64)
            .u64("corpus", self.corpus.len() as u64)
            .hex("seed", s.seed)
            .u64("max_len", s.max_len as u64)
            .u64("max_execs", s.max_execs)
            .bool("stop_on_crash", s.stop_on_crash)
            .raw("guest_version", &version)
            .finish();
        host::emit("fuzz-start", &json);
        doorbell::ok(0)
    }

    fn get_input(&mut self, gva: u64, capacity: u64) -> Verdict {
        let cap = capacity.min(self.settings.max_len as u64) as usize;
        let (input, is_seed) = self.next_input(cap);
        if !input.is_empty() {
            if let Err(e) = host::write_virt(gva, &input) {
                host::warn(&format!(
                    "fuzzer: GET_INPUT buffer {gva:#x}+{}: {}",
                    input.len(),
                    e.name()
                ));
                return doorbell::reply(doorbell::status_of(e), 0);
            }
        }
        let len = input.len() as u64;
        self.last = Some(input);
        self.last_is_seed = is_seed;
        doorbell::ok(len)
    }

    fn done(&mut self, code: u64) -> Verdict {
        if self.codes.insert(code) && !self.last_is_seed && self.corpus.len() < MAX_CORPUS {
            if let Some(input) = &self.last {
                host::debug(&format!(
                    "fuzzer: new result code {code:#x}: input {} joins the corpus",
                    to_hex(input)
                ));
                self.corpus.push(input.clone());
            }
        }
        self.count_exec();
        self.next_run()
    }

    /// A crash or a shutdown: report it, then stop or go on.
    fn finding(&mut self, f: Finding) -> Verdict {
        self.findings += 1;
        self.count_exec();
        let (input, len) = match &self.last {
            Some(i) => (json::string(&to_hex(i)), i.len()),
            None => ("null".to_string(), 0),
        };
        let opt = |v: Option<u64>, enc: fn(u64) -> String| v.map_or("null".to_string(), enc);
        let json = Object::new()
            .u64("n", self.findings)
            .str("kind", f.kind)
            .raw("vector", &opt(f.vector, |v| v.to_string()))
            .hex("rip", f.rip)
            .raw("extra", &opt(f.extra, json::hex))
            .raw("input", &input)
            .u64("len", len as u64)
            .u64("execs", self.execs)
            .finish();
        host::emit("finding", &json);
        let what = match f.vector {
            Some(v) => format!("{} (vector {v}) at {:#x}", f.kind, f.rip),
            None => format!("{} at {:#x}", f.kind, f.rip),
        };
        host::warn(&format!(
            "fuzzer: finding {}: {what} after {} execs, input {}",
            self.findings,
            self.execs,
            self.last.as_deref().map_or("none".into(), to_hex)
        ));
        if self.settings.stop_on_crash {
            return self.finish(
                "finding",
                format!("fuzzer: stopping at the first finding: {what}"),
            );
        }
        self.next_run()
    }

    fn log(&mut self, gva: u64, len: u64) -> Verdict {
        let n = len.min(MAX_LOG);
        match host::read_virt(gva, n as u32) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                host::info(&format!(
                    "fuzzer: guest: {}",
                    text.trim_end_matches(['\n', '\r'])
                ));
                doorbell::ok(n)
            }
            Err(e) => doorbell::reply(doorbell::status_of(e), 0),
        }
    }

    fn io(&mut self, io: &IoExit) -> Verdict {
        let Some(call) = Call::read_on(self.settings.port, io) else {
            return Verdict::decline();
        };
        match call {
            Call::Hello { version } => self.hello(version),
            Call::Snapshot => self.snapshot(),
            Call::GetInput { gva, capacity } => self.get_input(gva, capacity),
            Call::Done { code } => self.done(code),
            Call::Crash { vector, rip, extra } => self.finding(Finding {
                kind: "crash",
                vector: Some(vector),
                rip,
                extra: Some(extra),
            }),
            Call::Log { gva, len } => self.log(gva, len),
            Call::Unknown { .. } => doorbell::reply(doorbell::UNKNOWN_CALL, 0),
        }
    }

    fn shutdown(&mut self, ev: &Exit, reason: ShutdownReason) -> Verdict {
        let kind = match reason {
            ShutdownReason::TripleFault => "triple-fault",
            ShutdownReason::InternalError => "internal-error",
            ShutdownReason::EntryFailure => "entry-failure",
        };
        if !self.baseline {
            host::warn(&format!(
                "fuzzer: {kind} at {:#x} before SNAPSHOT: not fuzzing yet",
                ev.rip
            ));
            return Verdict::decline();
        }
        if reason == ShutdownReason::EntryFailure {
            return self.fail(format!(
                "fuzzer: vCPU entry failed at {:#x} (a host problem, not a finding)",
                ev.rip
            ));
        }
        self.finding(Finding {
            kind,
            vector: None,
            rip: ev.rip,
            extra: None,
        })
    }

    fn save(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.push(STATE_VERSION);
        out.push(if self.baseline { FLAG_BASELINE } else { 0 });
        out.extend_from_slice(&self.execs.to_le_bytes());
        out.extend_from_slice(&self.findings.to_le_bytes());
        out
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            return Ok(());
        }
        if state.len() != STATE_LEN || state[0] != STATE_VERSION {
            return Err(format!(
                "fuzzer: state must be {STATE_LEN} bytes of format {STATE_VERSION}, got {} bytes",
                state.len()
            ));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&state[at..at + 8]);
            u64::from_le_bytes(b)
        };
        self.baseline = state[1] & FLAG_BASELINE != 0;
        self.execs = u64_at(2);
        self.findings = u64_at(10);
        Ok(())
    }
}

impl Policy for Fuzzer {
    const NAME: &'static str = "fuzzer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "mutational fuzzer for doorbell guests, resetting the VM to a snapshot between runs";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        Fuzzer::from_config(config)
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        self.io(&io)
    }

    fn on_shutdown(&mut self, ev: &Exit, reason: ShutdownReason) -> Verdict {
        self.shutdown(ev, reason)
    }

    fn save_state(&self) -> Vec<u8> {
        self.save()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.restore(state)
    }
}

export_policy!(Fuzzer);

#[cfg(test)]
mod tests;

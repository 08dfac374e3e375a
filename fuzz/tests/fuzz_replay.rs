//! The fuzz pass of `make test`: every target replays its committed seeds
//! and regression inputs (`fuzz/corpus/TARGET/`, plus whatever a local
//! `make fuzz` left there), then a fixed number of mutations of them from
//! a fixed random seed. It runs in the ordinary test build, so CI needs
//! neither cargo-fuzz nor an instrumented build; the coverage-guided runs
//! are `make fuzz` (scripts/fuzz.sh, docs/fuzzing.md).
//!
//! A failing input is written to `fuzz/artifacts/TARGET/replay-crash-*`,
//! where `cargo fuzz run` can reproduce it under libFuzzer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Mutations per target; `WASMVISOR_FUZZ_MUTATIONS` overrides it.
const MUTATIONS: usize = 50_000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The corpus of one target, sorted by name so runs repeat.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() {
                let bytes = std::fs::read(&p).expect("corpus file is readable");
                out.push((p.file_name().unwrap().to_string_lossy().into_owned(), bytes));
            }
        }
    }
    out.sort();
    out
}

/// xorshift64*: a fixed sequence, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One libFuzzer-style mutation: flip, set, insert, erase, copy a block,
/// splice with another input, or append random bytes.
fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = *[0u8, 1, 0x7f, 0x80, 0xff]
                    .get(rng.below(6))
                    .unwrap_or(&(rng.next() as u8));
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(16));
                v.drain(i..i + n);
            }
            4 if v.len() > 1 => {
                let from = rng.below(v.len());
                let n = 1 + rng.below((v.len() - from).min(32));
                let block = v[from..from + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, block);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let n = 1 + rng.below(64);
                v.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    v.truncate(64 * 1024);
    v
}

/// Runs `input` through `target`; on a panic, saves it and fails.
fn run_one(name: &str, target: wasmvisor_fuzz::Target, what: &str, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_ok() {
        return;
    }
    let dir = fuzz_dir().join("artifacts").join(name);
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let file = dir.join(format!("replay-crash-{hash:016x}"));
    std::fs::write(&file, input).expect("artifact is written");
    panic!(
        "fuzz target {name} failed on {what}; input saved as {} \
         (reproduce: cd fuzz/libfuzzer && cargo fuzz run {name} {})",
        file.display(),
        file.display()
    );
}

fn replay(name: &str) {
    let target = wasmvisor_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("a known target");
    let seeds = corpus(name);
    let seeded = seeds.len();
    for (file, bytes) in &seeds {
        run_one(name, target, &format!("corpus file {file}"), bytes);
    }
    let mutations = std::env::var("WASMVISOR_FUZZ_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MUTATIONS);
    let mut pool: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    pool.push(Vec::new());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    for i in 0..mutations {
        let base = pool[rng.below(pool.len())].clone();
        let other = pool[rng.below(pool.len())].clone();
        let input = mutate(&mut rng, &base, &other);
        run_one(name, target, &format!("mutation {i}"), &input);
        // Grow the pool a little, as a fuzzer keeps new inputs; bounded so
        // that a run stays the same size.
        if pool.len() < 64 && rng.below(8) == 0 {
            pool.push(input);
        }
    }
    eprintln!("fuzz replay: {name}: {seeded} corpus inputs and {mutations} mutations passed");
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_replayed() {
            let mut listed: Vec<&str> = wasmvisor_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            let mut here = vec![$(stringify!($name)),*];
            listed.sort();
            here.sort();
            assert_eq!(listed, here);
            for name in here {
                let shim = fuzz_dir().join("libfuzzer/fuzz_targets").join(format!("{name}.rs"));
                assert!(shim.is_file(), "no cargo-fuzz entry {}", shim.display());
            }
        }
    };
}

replay_tests!(
    classify_validate_apply,
    config,
    exit_snapshot,
    kernel_profile,
    loaders,
    pagewalk,
    wit_action_conversion,
);

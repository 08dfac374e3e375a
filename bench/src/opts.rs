//! The command line.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

/// What `--quick` sets: `--count 5000 --rounds 2 --startup-runs 3 --swaps 10
/// --execs 2000 --resets 10`.
const QUICK: Counts = Counts {
    count: 5_000,
    rounds: 2,
    startup_runs: 3,
    swaps: 10,
    execs: 2_000,
    resets: 10,
};

/// The defaults of the counts.
const DEFAULT: Counts = Counts {
    count: 50_000,
    rounds: 5,
    startup_runs: 10,
    swaps: 50,
    execs: 20_000,
    resets: 50,
};

struct Counts {
    count: u32,
    rounds: usize,
    startup_runs: usize,
    swaps: usize,
    execs: u64,
    resets: usize,
}

/// The command line as clap parses it, before `--quick` is applied.
#[derive(Parser)]
#[command(
    name = "wasmvisor-bench",
    about = "wasmvisor's benchmark suite (docs/performance.md)",
    after_help = "Needs `make build` first (the release binary, policies and guests in target/).",
    // Given twice, an option's last value counts.
    args_override_self = true
)]
struct Cli {
    /// exits per dispatch phase and accesses per filter phase [default: 50000]
    #[arg(long, value_name = "N")]
    count: Option<u32>,
    /// runs of each dispatch, filter and BAR variant (median taken) [default: 5]
    #[arg(long, value_name = "R")]
    rounds: Option<usize>,
    /// start-ups of each variant, restores included (median taken) [default: 10]
    #[arg(long, value_name = "K")]
    startup_runs: Option<usize>,
    /// swaps per hot-swap variant (median taken) [default: 50]
    #[arg(long, value_name = "S")]
    swaps: Option<usize>,
    /// fuzzer execs in the snapshot section [default: 20000]
    #[arg(long, value_name = "E")]
    execs: Option<u64>,
    /// resets per dirty-page count in the snapshot section (median taken) [default: 50]
    #[arg(long, value_name = "N")]
    resets: Option<usize>,
    /// --count 5000 --rounds 2 --startup-runs 3 --swaps 10 --execs 2000 --resets 10
    ///
    /// In the order given: an option after --quick overrides it, one before
    /// it is overridden.
    #[arg(long)]
    quick: bool,
    /// run only these sections: dispatch,filter,swap,startup,memory,bars,snapshot
    #[arg(long, value_name = "LIST")]
    only: Option<String>,
    /// skip QEMU in the start-up section
    #[arg(long)]
    no_qemu: bool,
    /// dispatch: run only native, noop, quick, const, real, sync or observe (for profiling)
    #[arg(long, value_name = "NAME")]
    variant: Option<String>,
    /// also write the results as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The options of one run.
pub struct Opts {
    pub count: u32,
    pub rounds: usize,
    pub startup_runs: usize,
    pub swaps: usize,
    pub execs: u64,
    pub resets: usize,
    pub only: Option<Vec<String>>,
    pub qemu: bool,
    pub json: Option<PathBuf>,
    pub variant: Option<String>,
}

impl Opts {
    /// Parses the process's arguments. `--help` prints and exits 0; a usage
    /// error prints clap's message and exits 1, as every other error of
    /// the suite does.
    pub fn parse() -> Result<Opts> {
        let parsed = Cli::command()
            .try_get_matches()
            .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
        match parsed {
            Ok((cli, matches)) => Opts::from_cli(cli, &matches),
            Err(e) if e.use_stderr() => {
                let _ = e.print();
                std::process::exit(1);
            }
            Err(e) => e.exit(),
        }
    }

    fn from_cli(cli: Cli, m: &ArgMatches) -> Result<Opts> {
        // Where on the command line `id` was given, if it was.
        let at = |id: &str| {
            (m.value_source(id) == Some(ValueSource::CommandLine))
                .then(|| m.index_of(id))
                .flatten()
        };
        let quick = at("quick").filter(|_| cli.quick);
        // An option's value if it came after the last --quick, else
        // --quick's value if given, else the default.
        fn pick<T: Copy>(
            given: Option<T>,
            given_at: Option<usize>,
            quick_at: Option<usize>,
            quick: T,
            default: T,
        ) -> T {
            match (given, quick_at) {
                (Some(v), None) => v,
                (Some(v), Some(q)) if given_at.is_some_and(|g| g > q) => v,
                (_, Some(_)) => quick,
                (None, None) => default,
            }
        }
        let o = Opts {
            count: pick(cli.count, at("count"), quick, QUICK.count, DEFAULT.count),
            rounds: pick(
                cli.rounds,
                at("rounds"),
                quick,
                QUICK.rounds,
                DEFAULT.rounds,
            ),
            startup_runs: pick(
                cli.startup_runs,
                at("startup_runs"),
                quick,
                QUICK.startup_runs,
                DEFAULT.startup_runs,
            ),
            swaps: pick(cli.swaps, at("swaps"), quick, QUICK.swaps, DEFAULT.swaps),
            execs: pick(cli.execs, at("execs"), quick, QUICK.execs, DEFAULT.execs),
            resets: pick(
                cli.resets,
                at("resets"),
                quick,
                QUICK.resets,
                DEFAULT.resets,
            ),
            only: cli.only.map(|l| l.split(',').map(str::to_string).collect()),
            qemu: !cli.no_qemu,
            json: cli.json,
            variant: cli.variant,
        };
        if o.count == 0
            || o.rounds == 0
            || o.startup_runs == 0
            || o.swaps == 0
            || o.execs == 0
            || o.resets == 0
        {
            bail!(
                "--count, --rounds, --startup-runs, --swaps, --execs and --resets must be at least 1"
            );
        }
        Ok(o)
    }

    /// Whether `section` runs: all do unless `--only` names some.
    pub fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|s| s == section))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Opts> {
        let argv = std::iter::once("wasmvisor-bench").chain(args.iter().copied());
        let m = Cli::command().try_get_matches_from(argv)?;
        Opts::from_cli(Cli::from_arg_matches(&m)?, &m)
    }

    fn counts(o: &Opts) -> (u32, usize, usize, usize) {
        (o.count, o.rounds, o.startup_runs, o.swaps)
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(counts(&o), (50_000, 5, 10, 50));
        assert_eq!((o.execs, o.resets), (20_000, 50));
        assert!(o.only.is_none() && o.qemu && o.json.is_none() && o.variant.is_none());
        assert!(o.wants("dispatch") && o.wants("bars"));
    }

    #[test]
    fn every_option() {
        let o = parse(&[
            "--count",
            "7",
            "--rounds",
            "3",
            "--startup-runs",
            "4",
            "--swaps",
            "9",
            "--execs",
            "11",
            "--resets",
            "12",
            "--only",
            "swap,startup",
            "--no-qemu",
            "--json",
            "out.json",
            "--variant",
            "noop",
        ])
        .unwrap();
        assert_eq!(counts(&o), (7, 3, 4, 9));
        assert_eq!((o.execs, o.resets), (11, 12));
        assert_eq!(
            o.only.as_deref(),
            Some(&["swap".into(), "startup".into()][..])
        );
        assert!(o.wants("swap") && o.wants("startup") && !o.wants("dispatch"));
        assert!(!o.qemu);
        assert_eq!(o.json, Some(PathBuf::from("out.json")));
        assert_eq!(o.variant.as_deref(), Some("noop"));
    }

    #[test]
    fn quick_and_the_options_around_it_apply_in_order() {
        assert_eq!(counts(&parse(&["--quick"]).unwrap()), (5_000, 2, 3, 10));
        let o = parse(&["--quick", "--resets", "3"]).unwrap();
        assert_eq!((o.execs, o.resets), (2_000, 3));
        assert_eq!(
            counts(&parse(&["--quick", "--rounds", "9"]).unwrap()),
            (5_000, 9, 3, 10)
        );
        assert_eq!(
            counts(&parse(&["--rounds", "9", "--quick"]).unwrap()),
            (5_000, 2, 3, 10)
        );
        assert_eq!(
            counts(&parse(&["--swaps", "1", "--quick", "--count", "8"]).unwrap()),
            (8, 2, 3, 10)
        );
    }

    #[test]
    fn the_last_of_a_repeated_option_counts() {
        let o = parse(&[
            "--rounds", "3", "--rounds", "4", "--only", "a", "--only", "b",
        ])
        .unwrap();
        assert_eq!(o.rounds, 4);
        assert_eq!(o.only, Some(vec!["b".to_string()]));
        let o = parse(&["--rounds", "3", "--quick", "--rounds", "4", "--quick"]).unwrap();
        assert_eq!(o.rounds, 2);
    }

    #[test]
    fn zero_counts_and_unknown_options_are_refused() {
        for args in [
            ["--count", "0"],
            ["--rounds", "0"],
            ["--startup-runs", "0"],
            ["--swaps", "0"],
            ["--execs", "0"],
            ["--resets", "0"],
        ] {
            let e = parse(&args).err().expect("refused");
            assert!(e.to_string().contains("must be at least 1"), "{e}");
        }
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["--count"]).is_err());
        assert!(parse(&["--count", "x"]).is_err());
        assert!(parse(&["extra"]).is_err());
    }

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }
}

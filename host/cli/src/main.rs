//! `wasmvisor`: the command line. Parses flags into a `VmConfig`, runs
//! the VM, prints the summary and turns the outcome into an exit code.
//! Every error is one line on stderr and a non-zero exit code.

#![forbid(unsafe_code)]

mod assets;
mod check;
mod conformance;
mod control;
mod inspect;
mod replay;
mod run;
mod scaffold;
mod symbols;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wasmvisor_vmm::outcome::EXIT_HOST_ERROR;

/// A KVM hypervisor whose VM exits are handled by Wasm policies.
#[derive(Debug, Parser)]
#[command(name = "wasmvisor", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a guest under Wasm policies (no arguments: the built-in demo).
    Run(Box<run::RunArgs>),
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Snapshot, reset or dump a running VM.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Replay a recording (`run --record`) against a policy, without a VM, and show where its answers differ.
    Replay(replay::ReplayArgs),
    /// Write a Linux kernel's kallsyms as an ELF symbol file for gdb's `add-symbol-file` (docs/gdb.md).
    GdbSymbols(symbols::GdbSymbolsArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Create a new policy, in Rust, C, Python or JavaScript, that builds and passes the conformance harness.
    New(scaffold::NewArgs),
    /// Show a policy's name, WIT version and subscriptions.
    Inspect(inspect::InspectArgs),
    /// Validate a policy without a VM: world, version, imports, init and subscriptions, with readable diagnostics.
    Check(check::CheckArgs),
    /// Run the conformance harness (docs/conformance.md) against a policy, on KVM.
    Conformance(conformance::ConformanceArgs),
    /// List the policies of a running VM (through its control socket).
    List(control::ListArgs),
    /// Replace a running VM's policy with another component.
    Swap(control::SwapArgs),
    /// Add a policy to a running VM, at the end of its chain.
    Load(control::LoadArgs),
    /// Remove a policy from a running VM.
    Unload(control::UnloadArgs),
    /// Compile policies into the cache, so that loading them skips the compile.
    Precompile(control::PrecompileArgs),
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Write a snapshot of a running VM into a directory (`run --restore DIR` resumes it).
    Snapshot(vm::SnapshotArgs),
    /// Take the in-memory baseline that `vm reset` returns the VM to.
    Baseline(vm::ResetArgs),
    /// Put a running VM back to its baseline, copying back only the pages written since.
    Reset(vm::ResetArgs),
    /// Write guest RAM and the vCPUs' registers as an ELF core (drgn, crash, gdb).
    Dump(vm::DumpArgs),
}

fn main() -> ExitCode {
    // The libraries (passthrough devices, mostly) report what they work
    // around as tracing warnings: one plain line each on stderr.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Replay(args) => replay::run(args),
        Command::GdbSymbols(args) => symbols::run(args),
        Command::Vm(VmCommand::Snapshot(args)) => vm::snapshot(args),
        Command::Vm(VmCommand::Baseline(args)) => vm::baseline(args),
        Command::Vm(VmCommand::Reset(args)) => vm::reset(args),
        Command::Vm(VmCommand::Dump(args)) => vm::dump(args),
        Command::Policy(PolicyCommand::Inspect(args)) => inspect::inspect(args).map(|()| 0),
        Command::Policy(PolicyCommand::Check(args)) => check::check(args),
        Command::Policy(PolicyCommand::New(args)) => scaffold::run(args),
        Command::Policy(PolicyCommand::Conformance(args)) => conformance::run(args),
        Command::Policy(PolicyCommand::List(args)) => control::list(args),
        Command::Policy(PolicyCommand::Swap(args)) => control::swap(args),
        Command::Policy(PolicyCommand::Load(args)) => control::load(args),
        Command::Policy(PolicyCommand::Unload(args)) => control::unload(args),
        Command::Policy(PolicyCommand::Precompile(args)) => control::precompile(args),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // One line: the chain joined, never a backtrace.
            let msg = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("wasmvisor: error: {msg}");
            ExitCode::from(EXIT_HOST_ERROR as u8)
        }
    }
}

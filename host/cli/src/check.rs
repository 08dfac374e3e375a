//! `wasmvisor policy check P.wasm[:config]`: validates a policy without a
//! VM and says, line by line, what is right and what is wrong: the file,
//! the world and its version, every import, `info`, `init` with the given
//! config, and the subscriptions it returns. Exit code 0 when the policy
//! would load, 1 when it would not.

use anyhow::Result;
use clap::Args;
use wasmvisor_policy::{
    survey, CaptureConsole, ImportSource, PolicyEngine, PolicyImage, HANDLER, QUICK_HANDLER,
};
use wasmvisor_vmm::config::PolicySpec;

use crate::inspect::{describe, scratch_instance};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy component, optionally with config: P.wasm[:key=value,...].
    policy: String,
}

/// The checklist as it is printed.
#[derive(Default)]
struct Report {
    errors: usize,
}

impl Report {
    fn ok(&mut self, what: impl AsRef<str>) {
        println!("ok     {}", what.as_ref());
    }
    fn note(&mut self, what: impl AsRef<str>) {
        println!("note   {}", what.as_ref());
    }
    fn warn(&mut self, what: impl AsRef<str>) {
        println!("warn   {}", what.as_ref());
    }
    fn error(&mut self, what: impl AsRef<str>) {
        self.errors += 1;
        println!("error  {}", what.as_ref());
    }
}

/// The interface name without its version, and the version.
fn split_version(name: &str) -> (&str, &str) {
    name.split_once('@').unwrap_or((name, ""))
}

pub fn check(args: CheckArgs) -> Result<i32> {
    let spec = PolicySpec::parse(&args.policy)?;
    let engine = PolicyEngine::new()?;
    let mut r = Report::default();
    println!("checking {}", spec.path.display());

    // The file, the world and the imports, from the component's type.
    let s = match survey(&engine, &spec.path) {
        Ok(s) => s,
        Err(e) => {
            r.error(e.to_string());
            println!("result: 1 error; the policy would not load");
            return Ok(1);
        }
    };
    r.ok(format!(
        "a Wasm component of {} KiB",
        s.bytes.div_ceil(1024)
    ));
    let (want, want_version) = split_version(HANDLER);
    match s.exports.iter().find(|e| split_version(e).0 == want) {
        Some(e) if e == HANDLER => r.ok(format!("exports {HANDLER}")),
        Some(e) => r.error(format!(
            "exports {e}: built against wasmvisor:policy {}, but this host serves {want_version}; rebuild it against wit/policy.wit",
            split_version(e).1
        )),
        None => r.error(format!(
            "does not export {HANDLER}: not a policy (its exports: {})",
            if s.exports.is_empty() { "none".to_string() } else { s.exports.join(", ") }
        )),
    }
    if s.exports.iter().any(|e| e == QUICK_HANDLER) {
        r.ok(format!(
            "exports {QUICK_HANDLER}: exits are answered through the list-free handle-exit-quick"
        ));
    } else {
        r.note(format!(
            "does not export {QUICK_HANDLER}: exits are answered through handle-exit (world quick-policy adds the list-free answer; the Rust SDK exports it)"
        ));
    }
    // WASI interfaces are summed up: a standard library imports a dozen.
    let mut wasi: Vec<&str> = Vec::new();
    for (import, source) in &s.imports {
        match source {
            ImportSource::Host => r.ok(format!("imports {import}")),
            ImportSource::Wasi if import.starts_with("wasi:clocks/") => r.note(format!(
                "imports {import}: its calls trap unless the operator grants @wasi=clocks"
            )),
            ImportSource::Wasi => wasi.push(import),
            ImportSource::Missing if import.starts_with("wasmvisor:policy/") => r.error(format!(
                "imports {import}, which this host does not serve (it serves wasmvisor:policy/host@{want_version})"
            )),
            ImportSource::Missing => r.error(format!(
                "imports {import}, which wasmvisor does not provide to policies"
            )),
        }
    }
    if !wasi.is_empty() {
        let mut packages: Vec<&str> = wasi
            .iter()
            .map(|i| i.split_once('/').map_or(*i, |(p, _)| p))
            .collect();
        packages.dedup();
        r.ok(format!(
            "imports {} WASI 0.2 interfaces ({}), served over an empty context",
            wasi.len(),
            packages.join(", ")
        ));
    }
    if r.errors > 0 {
        println!("result: {} error(s); the policy would not load", r.errors);
        return Ok(1);
    }

    // Link, instantiate, and call info and init as the host would.
    let image = match PolicyImage::load_with(&engine, &spec.path, spec.sandbox.wasi) {
        Ok(i) => i,
        Err(e) => {
            r.error(e.to_string());
            println!("result: 1 error; the policy would not load");
            return Ok(1);
        }
    };
    r.ok("links against the host");
    let (mut inst, console) = scratch_instance(&image, &spec.sandbox.limits)?;
    match inst.info() {
        Ok(info) => r.ok(format!(
            "info: {} {}: {}",
            info.name, info.version, info.description
        )),
        Err(e) => r.error(format!("info: {e}")),
    }
    let shown: Vec<String> = spec
        .config
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let subs = match inst.init(&spec.config) {
        Ok(subs) => {
            r.ok(format!("init accepts the config [{}]", shown.join(",")));
            subs
        }
        Err(e) => {
            r.error(format!("init with [{}]: {e}", shown.join(",")));
            print_log(&console);
            println!("result: {} error(s); the policy would not load", r.errors);
            return Ok(1);
        }
    };
    print_log(&console);
    println!("subscriptions:");
    for line in describe(&subs) {
        println!("{line}");
    }
    for problem in subs.unsupported() {
        r.warn(problem);
    }
    if !subs.constants.is_empty() {
        r.ok(format!(
            "declares {} constant answer(s)",
            subs.constants.len()
        ));
    }
    let needed = subs.capabilities.names();
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !spec.sandbox.grants.names().contains(c))
        .collect();
    if missing.is_empty() {
        r.ok("every capability it asks for is granted");
    } else {
        let grants: Vec<String> = missing.iter().map(|c| format!("@grant={c}")).collect();
        r.note(format!(
            "asks for {}: run it as --policy {}:{}",
            missing.join(", "),
            spec.path.display(),
            grants.join(",")
        ));
    }
    println!("result: ok; the policy loads");
    Ok(0)
}

/// Shows what the policy logged while it was checked.
fn print_log(console: &CaptureConsole) {
    for line in console.text().lines() {
        println!("log    {line}");
    }
}

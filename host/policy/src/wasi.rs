//! The locked-down WASI a wasm32-wasip2 policy's standard library links
//! against.
//!
//! wasmtime-wasi's preview-2 interfaces are linked over an empty context:
//! no arguments, environment, preopened directories or inherited stdio
//! (standard streams are empty), TCP, UDP and name lookup off, every socket
//! address refused. The clocks are linked as functions that trap: a policy
//! gets no time source, and cannot sleep or poll a timer, which would block
//! its vCPU thread where the epoch deadline cannot interrupt it.
//!
//! The operator may grant a policy more, per policy ([`WasiGrants`]):
//! the clocks, and standard output and error (both go to the host's
//! standard error, never to the guest console).
//!
//! Only the interfaces a policy imports are linked (a Rust policy imports
//! 13 of the 27), which takes a third of the time of linking them all at
//! every start. The interfaces are linked at wasmtime-wasi's own version
//! (0.2.12), and wasmtime matches a policy's 0.2.x imports to them by
//! semver. That is why the unimplemented clocks are defined (or, when
//! everything is linked, shadowed) by name rather than stubbed with
//! `Linker::define_unknown_imports_as_traps`, which defines the exact
//! imported version (say 0.2.6) and so hides the real interfaces too.

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiView};

use crate::ctx::Ctx;

/// WASI packages a policy may import (at version 0.2.x).
pub(crate) const PACKAGES: [&str; 6] = [
    "wasi:cli/",
    "wasi:io/",
    "wasi:random/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// The clock functions, shadowed by traps.
const CLOCKS: [(&str, &[&str]); 2] = [
    (
        "wasi:clocks/monotonic-clock@0.2.12",
        &[
            "now",
            "resolution",
            "subscribe-instant",
            "subscribe-duration",
        ],
    ),
    ("wasi:clocks/wall-clock@0.2.12", &["now", "resolution"]),
];

/// True if `import` names a WASI interface the linker provides.
pub(crate) fn provides(import: &str) -> bool {
    let Some((interface, version)) = import.split_once('@') else {
        return false;
    };
    PACKAGES.iter().any(|p| interface.starts_with(p)) && version.starts_with("0.2.")
}

/// WASI authority the operator granted one policy. Nothing by default:
/// no filesystem, sockets, environment or arguments are ever granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WasiGrants {
    /// The monotonic and wall clocks (and so sleeping and timers).
    pub clocks: bool,
    /// Standard output and error, both written to the host's stderr.
    pub stdio: bool,
}

/// The context each store gets: empty, plus what was granted.
pub(crate) fn ctx(grants: WasiGrants) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if grants.stdio {
        b.stdout(wasmtime_wasi::cli::stderr())
            .stderr(wasmtime_wasi::cli::stderr());
    }
    b.build()
}

/// The WASI interfaces of `imports` (full import names), unversioned,
/// sorted and each once: what [`add_to_linker`] is asked to link.
pub(crate) fn interfaces<'a>(imports: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = imports
        .filter(|i| provides(i))
        .filter_map(|i| i.split_once('@').map(|(name, _)| name.to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Adds to `linker` the WASI preview 2 interfaces a policy imports
/// (`interfaces`, unversioned names), with the clocks trapping unless
/// granted. Linking only those, not all of wasmtime-wasi's thirty, saves
/// most of the linker's cost at start-up; a name this function does not
/// know (a newer 0.2.x interface) links the whole set instead.
pub(crate) fn add_to_linker(
    linker: &mut Linker<Ctx>,
    grants: WasiGrants,
    interfaces: &[String],
) -> wasmtime::Result<()> {
    if !interfaces.iter().all(|i| known(i)) {
        return add_everything(linker, grants);
    }
    for interface in interfaces {
        match CLOCKS
            .iter()
            .find(|(name, _)| name.split('@').next() == Some(interface))
        {
            Some(clock) if !grants.clocks => trap_clock(linker, clock)?,
            _ => add_interface(linker, interface)?,
        }
    }
    Ok(())
}

/// Every WASI preview 2 interface, the clocks shadowed by traps unless
/// granted.
fn add_everything(linker: &mut Linker<Ctx>, grants: WasiGrants) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    if grants.clocks {
        return Ok(());
    }
    linker.allow_shadowing(true);
    for clock in &CLOCKS {
        trap_clock(linker, clock)?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// Defines a clock interface whose every function traps with one line.
fn trap_clock(
    linker: &mut Linker<Ctx>,
    (interface, funcs): &(&str, &[&str]),
) -> wasmtime::Result<()> {
    let mut instance = linker.instance(interface)?;
    for func in funcs.iter() {
        let message = format!("{interface}#{func} is not available to policies (no clocks)");
        instance.func_new(func, move |_, _, _, _| {
            Err(wasmtime::Error::msg(message.clone()))
        })?;
    }
    Ok(())
}

/// The interfaces [`add_interface`] links one by one.
const KNOWN: [&str; 27] = [
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/exit",
    "wasi:cli/environment",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/instance-network",
    "wasi:sockets/network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/tcp",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];

fn known(interface: &str) -> bool {
    KNOWN.contains(&interface)
}

/// What wasi:io's host functions see of the store.
struct HasIo;

fn table(t: &mut Ctx) -> &mut ResourceTable {
    WasiView::ctx(t).table
}

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// Links one interface of [`KNOWN`], as `wasmtime_wasi::p2::add_to_linker_sync`
/// does for all of them.
fn add_interface(l: &mut Linker<Ctx>, interface: &str) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets, sync};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
    match interface {
        "wasi:io/error" => sync::io::error::add_to_linker::<Ctx, HasIo>(l, table),
        "wasi:io/poll" => sync::io::poll::add_to_linker::<Ctx, HasIo>(l, table),
        "wasi:io/streams" => sync::io::streams::add_to_linker::<Ctx, HasIo>(l, table),
        "wasi:clocks/wall-clock" => {
            clocks::wall_clock::add_to_linker::<Ctx, WasiClocks>(l, Ctx::clocks)
        }
        "wasi:clocks/monotonic-clock" => {
            clocks::monotonic_clock::add_to_linker::<Ctx, WasiClocks>(l, Ctx::clocks)
        }
        "wasi:filesystem/types" => {
            sync::filesystem::types::add_to_linker::<Ctx, WasiFilesystem>(l, Ctx::filesystem)
        }
        "wasi:filesystem/preopens" => {
            filesystem::preopens::add_to_linker::<Ctx, WasiFilesystem>(l, Ctx::filesystem)
        }
        "wasi:random/random" => random::random::add_to_linker::<Ctx, WasiRandom>(l, Ctx::random),
        "wasi:random/insecure" => {
            random::insecure::add_to_linker::<Ctx, WasiRandom>(l, Ctx::random)
        }
        "wasi:random/insecure-seed" => {
            random::insecure_seed::add_to_linker::<Ctx, WasiRandom>(l, Ctx::random)
        }
        "wasi:cli/exit" => cli::exit::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli),
        "wasi:cli/environment" => cli::environment::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli),
        "wasi:cli/stdin" => cli::stdin::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli),
        "wasi:cli/stdout" => cli::stdout::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli),
        "wasi:cli/stderr" => cli::stderr::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli),
        "wasi:cli/terminal-input" => {
            cli::terminal_input::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli)
        }
        "wasi:cli/terminal-output" => {
            cli::terminal_output::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli)
        }
        "wasi:cli/terminal-stdin" => {
            cli::terminal_stdin::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli)
        }
        "wasi:cli/terminal-stdout" => {
            cli::terminal_stdout::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli)
        }
        "wasi:cli/terminal-stderr" => {
            cli::terminal_stderr::add_to_linker::<Ctx, WasiCli>(l, Ctx::cli)
        }
        "wasi:sockets/tcp-create-socket" => {
            sockets::tcp_create_socket::add_to_linker::<Ctx, WasiSockets>(l, Ctx::sockets)
        }
        "wasi:sockets/instance-network" => {
            sockets::instance_network::add_to_linker::<Ctx, WasiSockets>(l, Ctx::sockets)
        }
        "wasi:sockets/network" => sockets::network::add_to_linker::<Ctx, WasiSockets>(
            l,
            &Default::default(),
            Ctx::sockets,
        ),
        "wasi:sockets/ip-name-lookup" => {
            sockets::ip_name_lookup::add_to_linker::<Ctx, WasiSockets>(l, Ctx::sockets)
        }
        "wasi:sockets/tcp" => {
            sync::sockets::tcp::add_to_linker::<Ctx, WasiSockets>(l, Ctx::sockets)
        }
        "wasi:sockets/udp" => {
            sync::sockets::udp::add_to_linker::<Ctx, WasiSockets>(l, Ctx::sockets)
        }
        "wasi:sockets/udp-create-socket" => {
            sync::sockets::udp_create_socket::add_to_linker::<Ctx, WasiSockets>(l, Ctx::sockets)
        }
        // `KNOWN` and this match list the same names; the tests link
        // every one of `KNOWN` and would meet this.
        other => Err(wasmtime::Error::msg(format!(
            "{other} is not an interface this host links one by one"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linked_interfaces_are_the_imported_wasi_ones_each_once() {
        let imports = [
            "wasi:io/streams@0.2.6",
            "wasmvisor:policy/host@0.1.0",
            "wasi:cli/stdout@0.2.6",
            "wasi:io/streams@0.2.0",
            "wasi:http/types@0.2.6",
        ];
        assert_eq!(
            interfaces(imports.into_iter()),
            ["wasi:cli/stdout", "wasi:io/streams"]
        );
    }

    #[test]
    fn every_known_interface_links_and_an_unknown_one_links_them_all() {
        let engine = wasmtime::Engine::default();
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for grants in [
            WasiGrants::default(),
            WasiGrants {
                clocks: true,
                stdio: true,
            },
        ] {
            let mut linker = Linker::<Ctx>::new(&engine);
            add_to_linker(&mut linker, grants, &names(&KNOWN)).expect("each known interface");
            let mut linker = Linker::<Ctx>::new(&engine);
            let unknown = names(&["wasi:cli/stdout", "wasi:cli/some-later-interface"]);
            add_to_linker(&mut linker, grants, &unknown).expect("the whole set");
        }
    }

    #[test]
    fn only_wasi_preview_2_packages_are_provided() {
        assert!(provides("wasi:cli/stdout@0.2.6"));
        assert!(provides("wasi:io/streams@0.2.0"));
        assert!(provides("wasi:clocks/monotonic-clock@0.2.12"));
        assert!(!provides("wasi:http/types@0.2.6"));
        assert!(!provides("wasi:cli/stdout@0.3.0"));
        assert!(!provides("wasi:cli/stdout"));
        assert!(!provides("acme:cli/stdout@0.2.6"));
    }
}

//! The VMM's configuration parsers (`wasmvisor_vmm::config`): `--policy`
//! specs, sizes, numbers, modes, and TOML config files through
//! `read_config_file` (the input is written to a scratch file, the only
//! way in). There is no control-socket protocol to fuzz yet.
//!
//! Invariants: nothing panics; a parsed policy spec prints back to an
//! argument that parses to the same spec; a parsed size or number prints
//! back (`format_size`, hex and decimal) to the same value; a parsed
//! `--dma-window` makes a DMA domain exactly when it is page-aligned,
//! non-empty and does not wrap, and that domain allows the window and
//! nothing just outside it; a parsed config file's paths are resolved
//! (absolute).

use std::path::PathBuf;
use std::sync::OnceLock;

use wasmvisor_vmm::config::{
    format_size, parse_dma_window, parse_mode, parse_number, parse_size, read_config_file,
    PolicySpec,
};
use wasmvisor_vmm::pci::DmaDomain;

/// A scratch folder for this process's TOML inputs.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("wasmvisor-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

fn check_policy_spec(s: &str) {
    let Ok(spec) = PolicySpec::parse(s) else {
        return;
    };
    let path = spec.path.to_str().expect("path comes from a str");
    assert!(s.starts_with(path));
    for (k, v) in &spec.config {
        assert!(!k.is_empty() && !k.contains('=') && !k.contains(','));
        assert!(!v.contains(','));
    }
    if !spec.config.is_empty() {
        let pairs: Vec<String> = spec
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let again = format!("{path}:{}", pairs.join(","));
        assert_eq!(PolicySpec::parse(&again).as_ref(), Ok(&spec), "{again:?}");
    }
}

fn check_scalars(s: &str) {
    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&format_size(n)), Ok(n), "{s:?}");
    }
    if let Ok(n) = parse_number(s) {
        assert_eq!(parse_number(&format!("{n:#x}")), Ok(n));
        assert_eq!(parse_number(&n.to_string()), Ok(n));
    }
    let _ = parse_mode(s);
}

fn check_dma_window(s: &str) {
    let Ok(w) = parse_dma_window(s) else {
        return;
    };
    let usable = w.size > 0
        && w.base % 0x1000 == 0
        && w.size % 0x1000 == 0
        && w.base.checked_add(w.size).is_some();
    let Ok(domain) = DmaDomain::new(&[w]) else {
        assert!(!usable, "{s:?} refused");
        return;
    };
    assert!(usable, "{s:?} accepted");
    assert_eq!(domain.windows(), Some(&[w][..]));
    if let Ok(len) = usize::try_from(w.size) {
        assert!(domain.allows(w.base, len));
    }
    assert!(!domain.allows(w.end(), 1));
    if w.base > 0 {
        assert!(!domain.allows(w.base - 1, 1));
    }
}

fn check_file(text: &[u8]) {
    let dir = scratch();
    let path = dir.join("vm.toml");
    std::fs::write(&path, text).expect("scratch file");
    let Ok(settings) = read_config_file(&path) else {
        return;
    };
    if let Some(n) = settings.mem_bytes {
        assert_eq!(parse_size(&format_size(n)), Ok(n));
    }
    // Relative paths resolve against the file's folder, absolute ones stay.
    let paths = settings.guest.iter().map(|g| &g.path);
    for p in paths.chain(settings.policies.iter().map(|p| &p.path)) {
        assert!(p.is_absolute(), "{p:?}");
    }
}

/// One fuzz input: never panics unless an invariant above is broken.
pub fn fuzz(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => check_file(rest),
        _ => {
            let s = String::from_utf8_lossy(rest);
            check_policy_spec(&s);
            check_scalars(&s);
            check_dma_window(&s);
        }
    }
}

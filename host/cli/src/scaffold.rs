//! `wasmvisor policy new NAME --lang rust|c|python|js [--from TEMPLATE]`:
//! a new policy directory that builds as it is, with a `build.sh` and a
//! README that say how to build, check, test and run it
//! (`docs/writing-a-policy.md`). Two starting points:
//!
//! - `minimal` (Rust, its default): `policies/template`, a commented
//!   policy of about 30 lines that answers one port, with a unit test
//!   through the SDK's harness;
//! - `conformance` (the default, and the only template, in C, Python and
//!   JavaScript): that language's conformance policy
//!   (`docs/conformance.md`), renamed; it passes the conformance harness.
//!
//! The project points at the SDK and the build scripts of the wasmvisor
//! repository by a path relative to itself, so it builds wherever it is
//! created, inside the checkout or not, as long as the two stay where
//! they are (`--repo` names another checkout).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// The repository this binary was built from: the SDK, the WIT and the
/// build script a scaffold uses.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

const RUST_LIB: &str = include_str!("../../../policies/conformance/src/lib.rs");
const RUST_MINIMAL: &str = include_str!("../../../policies/template/src/lib.rs");
const C_SOURCE: &str = include_str!("../../../policies/conformance-c/conformance.c");
const PY_SOURCE: &str = include_str!("../../../policies/conformance-py/app.py");
const JS_SOURCE: &str = include_str!("../../../policies/conformance-js/app.js");

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    C,
    Python,
    Js,
}

/// What a new policy starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// About 30 commented lines answering one port, with a unit test (Rust).
    Minimal,
    /// The conformance policy of the language (docs/conformance.md).
    Conformance,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The policy's name: lowercase letters, digits and dashes; also the
    /// directory created.
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The starting point [default: minimal for Rust; conformance, the only template, for C, Python and JavaScript].
    #[arg(long, value_enum)]
    from: Option<Template>,
    /// Where to create the directory [default: the current directory].
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// The wasmvisor repository (its policy-sdk, wit and scripts)
    /// [default: the one this binary was built from].
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
}

/// One file of a scaffold.
struct File {
    path: &'static str,
    text: String,
    executable: bool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// The conformance source renamed: its info says `name`.
fn renamed(source: &str, name: &str, language: &str, replacements: &[(&str, &str)]) -> String {
    let mut out = source.replace(
        &format!("conformance policy ({language})"),
        &format!("{name}: a policy started from the conformance policy ({language})"),
    );
    for (from, to) in replacements {
        out = out.replace(from, to);
    }
    out
}

fn build_script(repo: &Path, lang: &str, name: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n\
         # Builds {name}.wasm from this directory's sources with the tools\n\
         # scripts/setup-langs.sh installs (docs/writing-a-policy.md). The\n\
         # wasmvisor repository is found relative to this directory; set\n\
         # WASMVISOR_REPO to use another.\n\
         set -euo pipefail\n\
         here=\"$(cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\" && pwd)\"\n\
         repo=\"${{WASMVISOR_REPO:-$here/{repo}}}\"\n\
         exec \"$repo/scripts/build-policy.sh\" {lang} \"$here\" \"$here/{name}.wasm\"\n",
        repo = repo.display()
    )
}

/// `to` seen from `from`, both absolute and canonical: `../..` up to
/// their common ancestor, then down to `to`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn readme(name: &str, language: &str, build: &str) -> String {
    format!(
        "# {name}\n\n\
         A wasmvisor policy in {language}, started from the conformance policy\n\
         (`docs/conformance.md` in the wasmvisor repository): as created, it\n\
         behaves exactly as that spec says and passes the conformance harness.\n\
         Change it from there.\n\n\
         ```sh\n\
         {build}\n\
         wasmvisor policy check {name}.wasm          # world, imports, init, subscriptions\n\
         wasmvisor policy conformance {name}.wasm    # the conformance harness, on KVM\n\
         wasmvisor run --guest GUEST --policy {name}.wasm:@grant=protect-memory\n\
         ```\n\n\
         Record a run with `wasmvisor run ... --record run.rec`, then check a\n\
         new build against it without a VM: `wasmvisor replay run.rec --policy {name}.wasm`.\n"
    )
}

/// The Rust project's Cargo.toml: the SDK by a relative path.
fn cargo_toml(name: &str, repo: &Path) -> String {
    format!(
        "[package]\n\
         name = \"{name}\"\n\
         version = \"0.1.0\"\n\
         edition = \"2021\"\n\
         publish = false\n\n\
         [lib]\n\
         crate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\n\
         # The SDK of the wasmvisor repository, relative to this file. If\n\
         # you move this project, point the path at <repository>/policy-sdk.\n\
         wasmvisor-policy-sdk = {{ path = \"{sdk}\" }}\n\n\
         # A policy of its own, not part of an enclosing workspace.\n\
         [workspace]\n\n\
         [profile.release]\n\
         opt-level = \"s\"\n\
         lto = true\n\
         codegen-units = 1\n\
         panic = \"abort\"\n\
         strip = true\n",
        sdk = repo.join("policy-sdk").display()
    )
}

fn rust_build_script(name: &str) -> String {
    let krate = name.replace('-', "_");
    format!(
        "#!/usr/bin/env bash\n\
         # Builds {name}.wasm (docs/writing-a-policy.md); `cargo test` runs\n\
         # the unit tests on the host with the SDK's test harness.\n\
         set -euo pipefail\n\
         cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\"\n\
         cargo build --quiet --release --target wasm32-wasip2\n\
         cp \"${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{krate}.wasm\" {name}.wasm\n"
    )
}

fn minimal_readme(name: &str) -> String {
    format!(
        "# {name}\n\n\
         A wasmvisor policy in Rust. As created, it answers reads of I/O port\n\
         0x510 with 42 and logs writes (config keys `port` and `value`); see\n\
         `src/lib.rs`, and `docs/writing-a-policy.md` in the wasmvisor\n\
         repository for what a policy can do.\n\n\
         ```sh\n\
         cargo test                                  # the unit tests, on the host\n\
         ./build.sh                                  # {name}.wasm (rustup target add wasm32-wasip2)\n\
         wasmvisor policy check {name}.wasm          # world, imports, init, subscriptions\n\
         wasmvisor run --guest GUEST --policy {name}.wasm:port=0x510,value=7\n\
         ```\n\n\
         `Cargo.toml` finds the SDK by a path relative to this directory. If\n\
         you move the project, change that path to the repository's\n\
         `policy-sdk`, or create the project again with `--dir`.\n"
    )
}

/// `repo` is the repository as seen from the new project's directory.
fn files(lang: Lang, from: Template, name: &str, repo: &Path) -> Vec<File> {
    let script = |l: &str| File {
        path: "build.sh",
        text: build_script(repo, l, name),
        executable: true,
    };
    match lang {
        Lang::Rust => {
            let (lib, readme_text) = match from {
                Template::Minimal => (
                    RUST_MINIMAL
                        .replace("//! template: a wasmvisor policy", &format!("//! {name}: a wasmvisor policy"))
                        .replace("--policy template.wasm", &format!("--policy {name}.wasm"))
                        .replace(
                            "const NAME: &'static str = \"template\";",
                            &format!("const NAME: &'static str = \"{name}\";"),
                        ),
                    minimal_readme(name),
                ),
                Template::Conformance => (
                    renamed(
                        RUST_LIB,
                        name,
                        "Rust",
                        &[("const NAME: &'static str = \"conformance\";", &format!("const NAME: &'static str = \"{name}\";"))],
                    ),
                    readme(name, "Rust", "./build.sh                                  # needs rustup target wasm32-wasip2"),
                ),
            };
            vec![
                File {
                    path: "Cargo.toml",
                    text: cargo_toml(name, repo),
                    executable: false,
                },
                File {
                    path: "src/lib.rs",
                    text: lib,
                    executable: false,
                },
                File {
                    path: "build.sh",
                    text: rust_build_script(name),
                    executable: true,
                },
                File {
                    path: "README.md",
                    text: readme_text,
                    executable: false,
                },
            ]
        }
        Lang::C => vec![
            File {
                path: "policy.c",
                text: renamed(
                    C_SOURCE,
                    name,
                    "C",
                    &[(
                        "policy_string_dup(&ret->name, \"conformance\");",
                        &format!("policy_string_dup(&ret->name, \"{name}\");"),
                    )],
                ),
                executable: false,
            },
            script("c"),
            File {
                path: "README.md",
                text: readme(name, "C", "./build.sh                                  # clang, wasi-libc, wit-bindgen: scripts/setup-langs.sh"),
                executable: false,
            },
        ],
        Lang::Python => vec![
            File {
                path: "app.py",
                text: renamed(
                    PY_SOURCE,
                    name,
                    "Python",
                    &[(
                        "PolicyInfo(\"conformance\",",
                        &format!("PolicyInfo(\"{name}\","),
                    )],
                ),
                executable: false,
            },
            script("python"),
            File {
                path: "README.md",
                text: readme(name, "Python", "./build.sh                                  # componentize-py: scripts/setup-langs.sh"),
                executable: false,
            },
        ],
        Lang::Js => vec![
            File {
                path: "app.js",
                text: renamed(
                    JS_SOURCE,
                    name,
                    "JavaScript",
                    &[("name: \"conformance\",", &format!("name: \"{name}\","))],
                ),
                executable: false,
            },
            script("js"),
            File {
                path: "README.md",
                text: readme(name, "JavaScript", "./build.sh                                  # jco: scripts/setup-langs.sh"),
                executable: false,
            },
        ],
    }
}

pub fn run(args: NewArgs) -> Result<i32> {
    if !valid_name(&args.name) {
        bail!(
            "invalid policy name `{}`: use lowercase letters, digits and dashes, starting with a letter",
            args.name
        );
    }
    let repo = match &args.repo {
        Some(r) => r.clone(),
        None => PathBuf::from(REPO),
    };
    let repo = repo.canonicalize().with_context(|| {
        format!(
            "the wasmvisor repository {} is not there; pass --repo DIR",
            repo.display()
        )
    })?;
    if !repo.join("wit/policy.wit").is_file() {
        bail!(
            "{} is not a wasmvisor repository (no wit/policy.wit); pass --repo DIR",
            repo.display()
        );
    }
    let from = match (args.from, args.lang) {
        (Some(Template::Minimal), Lang::C | Lang::Python | Lang::Js) => bail!(
            "the minimal template is Rust only; in {:?} start from the conformance policy (--from conformance)",
            args.lang
        ),
        (Some(t), _) => t,
        (None, Lang::Rust) => Template::Minimal,
        (None, _) => Template::Conformance,
    };
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let base = args
        .dir
        .canonicalize()
        .with_context(|| format!("cannot find {}", args.dir.display()))?;
    let dir = base.join(&args.name);
    if dir.exists() {
        bail!("{} already exists; not overwriting it", dir.display());
    }
    for f in files(args.lang, from, &args.name, &relative(&dir, &repo)) {
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, &f.text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if f.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    println!(
        "created {}: build it with {}/build.sh",
        dir.display(),
        dir.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimal_template_is_renamed_and_small() {
        let fs = files(
            Lang::Rust,
            Template::Minimal,
            "door-audit",
            Path::new("../../wv"),
        );
        let lib = &fs.iter().find(|f| f.path == "src/lib.rs").unwrap().text;
        assert!(lib.contains("const NAME: &'static str = \"door-audit\";"));
        assert!(lib.starts_with("//! door-audit: a wasmvisor policy"));
        assert!(!lib.contains("template"), "{lib}");
        let code = lib.lines().take_while(|l| !l.starts_with("#[cfg(test)]"));
        assert!(code.count() <= 50, "the policy itself stays small");
        let toml = &fs.iter().find(|f| f.path == "Cargo.toml").unwrap().text;
        assert!(toml.contains("path = \"../../wv/policy-sdk\""), "{toml}");
    }

    #[test]
    fn paths_are_relative() {
        let r = |a: &str, b: &str| relative(Path::new(a), Path::new(b));
        assert_eq!(
            r("/tmp/x/door", "/work/main"),
            Path::new("../../../work/main")
        );
        assert_eq!(r("/work/main/p/door", "/work/main"), Path::new("../.."));
        assert_eq!(r("/work/main", "/work/main"), Path::new("."));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["guard", "msr-audit", "x2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Guard", "2x", "a_b", "a/b", "a-", "../x"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_scaffold_renames_the_policy() {
        for lang in [Lang::Rust, Lang::C, Lang::Python, Lang::Js] {
            let fs = files(
                lang,
                Template::Conformance,
                "door-audit",
                Path::new("../repo"),
            );
            let all: String = fs.iter().map(|f| f.text.as_str()).collect();
            assert!(
                all.contains("door-audit: a policy started from the conformance policy"),
                "{lang:?}"
            );
            // The name in `info` changes; the event kind the spec fixes does not.
            assert!(
                !all.contains("name, \"conformance\")") && !all.contains("name: \"conformance\"")
            );
            assert!(
                all.contains("\"conformance\""),
                "{lang:?}: the emit kind stays"
            );
            assert!(
                fs.iter().any(|f| f.path == "build.sh" && f.executable),
                "{lang:?}"
            );
        }
    }
}

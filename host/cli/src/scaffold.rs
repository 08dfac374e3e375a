//! `wasmvisor policy new NAME --lang rust|c|python|js`: a new policy
//! directory that builds and passes the conformance harness as it is. The
//! starting point is the conformance policy (`docs/conformance.md`) of
//! that language, renamed, with a `build.sh` and a README that say how to
//! build, check, test and run it (`docs/writing-a-policy.md`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// The repository this binary was built from: the SDK, the WIT and the
/// build script a scaffold uses.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

const RUST_LIB: &str = include_str!("../../../policies/conformance/src/lib.rs");
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

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The policy's name: lowercase letters, digits and dashes; also the
    /// directory created.
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: Lang,
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
         # scripts/setup-langs.sh installs (docs/writing-a-policy.md).\n\
         set -euo pipefail\n\
         here=\"$(cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\" && pwd)\"\n\
         exec \"{repo}/scripts/build-policy.sh\" {lang} \"$here\" \"$here/{name}.wasm\"\n",
        repo = repo.display()
    )
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

fn files(lang: Lang, name: &str, repo: &Path) -> Vec<File> {
    let script = |l: &str| File {
        path: "build.sh",
        text: build_script(repo, l, name),
        executable: true,
    };
    match lang {
        Lang::Rust => {
            let sdk = repo.join("policy-sdk");
            let krate = name.replace('-', "_");
            vec![
                File {
                    path: "Cargo.toml",
                    text: format!(
                        "[package]\n\
                         name = \"{name}\"\n\
                         version = \"0.1.0\"\n\
                         edition = \"2021\"\n\
                         publish = false\n\n\
                         [lib]\n\
                         crate-type = [\"cdylib\", \"rlib\"]\n\n\
                         [dependencies]\n\
                         wasmvisor-policy-sdk = {{ path = \"{sdk}\" }}\n\n\
                         # A policy of its own, not part of an enclosing workspace.\n\
                         [workspace]\n\n\
                         [profile.release]\n\
                         opt-level = \"s\"\n\
                         lto = true\n\
                         codegen-units = 1\n\
                         panic = \"abort\"\n\
                         strip = true\n",
                        sdk = sdk.display()
                    ),
                    executable: false,
                },
                File {
                    path: "src/lib.rs",
                    text: renamed(
                        RUST_LIB,
                        name,
                        "Rust",
                        &[("const NAME: &'static str = \"conformance\";", &format!("const NAME: &'static str = \"{name}\";"))],
                    ),
                    executable: false,
                },
                File {
                    path: "build.sh",
                    text: format!(
                        "#!/usr/bin/env bash\n\
                         # Builds {name}.wasm (docs/writing-a-policy.md); `cargo test` runs\n\
                         # the unit tests on the host with the SDK's test harness.\n\
                         set -euo pipefail\n\
                         cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\"\n\
                         cargo build --quiet --release --target wasm32-wasip2\n\
                         cp \"${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{krate}.wasm\" {name}.wasm\n"
                    ),
                    executable: true,
                },
                File {
                    path: "README.md",
                    text: readme(name, "Rust", "./build.sh                                  # needs rustup target wasm32-wasip2"),
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
    let dir = args.dir.join(&args.name);
    if dir.exists() {
        bail!("{} already exists; not overwriting it", dir.display());
    }
    for f in files(args.lang, &args.name, &repo) {
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
            let fs = files(lang, "door-audit", Path::new("/repo"));
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

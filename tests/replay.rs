//! Record and replay: `run --record` writes every policy call with the
//! import calls it made; `wasmvisor replay` feeds it to a policy without a
//! VM. The same policy gives identical answers, a changed one a readable
//! diff, and a damaged recording one clear error line.

use std::path::{Path, PathBuf};

use wasmvisor_tests::*;

/// Records the conformance guest under the conformance policy.
fn record_conformance(dir: &Path) -> PathBuf {
    let rec = dir.join("conformance.rec");
    let spec = format!("{}:@grant=protect-memory", policy("conformance"));
    let r = run_conformance_guest(&spec, &["--record", rec.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("16/16 checks passed"), "{r:?}");
    assert_contains(&r.stderr, &["wasmvisor: recorded 22 policy calls to"]);
    rec
}

#[test]
fn a_recording_holds_each_exit_with_its_import_calls_and_answer() {
    require_kvm!();
    let dir = scratch("replay-format");
    let rec = record_conformance(&dir);
    let all = json_lines(&rec);
    assert_eq!(all[0]["format"], "wasmvisor-recording");
    assert_eq!(all[0]["version"], 1);
    assert_eq!(all[1]["call"], "init");
    assert_eq!(all.last().unwrap()["call"], "end");
    assert_eq!(all.last().unwrap()["entries"], 22);
    let exits: Vec<&serde_json::Value> =
        all.iter().filter(|e| e["call"] == "handle-exit").collect();
    assert_eq!(exits.len(), 21);
    // Check 8: the policy read the guarded page; the recording has the
    // bytes it got (0x600df00d, little-endian) and the answer it gave.
    let peek = exits
        .iter()
        .find(|e| {
            e["imports"].as_array().is_some_and(|i| {
                !i.is_empty() && i[0]["call"] == "read-phys" && i[0]["result"]["Ok"].is_array()
            })
        })
        .expect("a read-phys import");
    assert_eq!(peek["imports"][0]["args"], serde_json::json!([458752, 4]));
    assert_eq!(
        peek["imports"][0]["result"]["Ok"],
        serde_json::json!([13, 240, 13, 96])
    );
    assert_eq!(
        peek["outcome"]["returned"]["Handled"][0]["CompleteRead"],
        0x600d_f00d_u64
    );
    // The emit of check 5 is on the tape too.
    assert!(exits.iter().any(|e| e["imports"][0]["call"] == "emit"
        && e["imports"][0]["args"] == serde_json::json!(["conformance", "{\"value\":43981}"])));
}

#[test]
fn the_same_policy_replays_identically_without_a_vm() {
    require_kvm!();
    let dir = scratch("replay-same");
    let rec = record_conformance(&dir);
    let r = wasmvisor(&[
        "replay",
        rec.to_str().unwrap(),
        "--policy",
        &policy("conformance"),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.trim(),
        format!(
            "replayed 1 init and 21 exit calls of policy conformance on 1 vCPU(s) against {}: all answers identical",
            policy("conformance")
        )
    );
}

#[test]
fn a_changed_policy_gives_a_readable_diff() {
    require_kvm!();
    let dir = scratch("replay-changed");
    let rec = record_conformance(&dir);
    // noop subscribes to nothing by default and answers every read with 0.
    let r = wasmvisor(&[
        "replay",
        rec.to_str().unwrap(),
        "--policy",
        &policy("noop"),
        "--name",
        "conformance",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let out = &r.stdout;
    // The first exit: port 0x520 read, recorded answer 1, replayed 0.
    assert!(
        out.contains(
            "vcpu 0 seq 0 at rip 0x8031: {\"Io\":{\"port\":1312,\"size\":4,\"direction\":\"Read\",\"data\":0}}\n  recorded: {\"Handled\":[{\"CompleteRead\":1}]}\n  replayed: {\"Handled\":[{\"CompleteRead\":0}]}\n"
        ),
        "{out}"
    );
    assert_contains(
        out,
        &["vcpu 0 init\n  recorded: {\"Ok\":{\"ports\":[{\"first\":1312"],
    );
    let last = out.lines().last().unwrap();
    assert!(last.ends_with("of 22 calls differ"), "{out}");
}

#[test]
fn a_damaged_recording_is_one_clear_error() {
    require_kvm!();
    let dir = scratch("replay-damaged");
    let rec = record_conformance(&dir);
    let text = std::fs::read_to_string(&rec).unwrap();
    let replay = |path: &Path| {
        wasmvisor(&[
            "replay",
            path.to_str().unwrap(),
            "--policy",
            &policy("conformance"),
        ])
        .one_error_line()
    };

    // Cut in the middle of line 5.
    let cut = dir.join("cut.rec");
    let at = text.match_indices('\n').nth(3).unwrap().0 + 40;
    std::fs::write(&cut, &text[..at]).unwrap();
    let line = replay(&cut);
    assert!(
        line.contains("line 5") && line.contains("corrupted or truncated"),
        "{line}"
    );

    // Whole lines, but the end line is missing.
    let short = dir.join("short.rec");
    let keep: Vec<&str> = text.lines().take(10).collect();
    std::fs::write(&short, keep.join("\n") + "\n").unwrap();
    let line = replay(&short);
    assert_contains(&line, &["no end line after its 9 entries"]);

    // A flipped field.
    let bad = dir.join("bad.rec");
    std::fs::write(&bad, text.replacen("\"handle-exit\"", "\"handle-exot\"", 1)).unwrap();
    assert!(replay(&bad).contains("corrupted or truncated"));

    // Another format version, and a file that is not a recording.
    let v2 = dir.join("v2.rec");
    std::fs::write(&v2, text.replacen("\"version\":1", "\"version\":2", 1)).unwrap();
    assert!(replay(&v2).contains("format version 2; this wasmvisor reads version 1"));
    let other = dir.join("other.rec");
    std::fs::write(&other, "hello\n").unwrap();
    assert!(replay(&other).contains("is not a wasmvisor recording"));
}

/// Introspection: get-reg, translate and read-virt come off the tape, so
/// the syscall tracer replays identically with no guest memory at all.
#[test]
fn an_introspection_policy_replays_from_its_recorded_memory_reads() {
    require_kvm!();
    let dir = scratch("replay-minios");
    let rec = dir.join("minios.rec");
    let r = Cmd::guest("minios.elf")
        .policy_with("syscall-tracer", "@grant=debug")
        .policy("serial")
        .args(["--record", rec.to_str().unwrap()])
        .run();
    assert!(r.stdout.ends_with("minios: done\n"), "{r:?}");
    let text = std::fs::read_to_string(&rec).unwrap();
    assert!(text.contains("\"call\":\"read-virt\"") || text.contains("\"call\":\"translate\""));
    let r = wasmvisor(&[
        "replay",
        rec.to_str().unwrap(),
        "--policy",
        &policy("syscall-tracer"),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_contains(&r.stdout, &["all answers identical"]);
}

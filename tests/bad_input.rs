//! Bad input: each case is one readable error line, a non-zero exit code
//! and no panic.

use wasmvisor_tests::*;

fn hello() -> String {
    guest("hello.elf").display().to_string()
}

#[test]
fn malformed_wasm_is_refused() {
    let dir = scratch("malformed");
    let p = dir.join("junk.wasm");
    std::fs::write(&p, b"this is not wasm at all").unwrap();
    let r = wasmvisor(&["run", "--guest", &hello(), "--policy", p.to_str().unwrap()]);
    let line = r.one_error_line();
    assert_contains(&line, &["junk.wasm"]);
    assert_contains(&line, &["not a WebAssembly file"]);
    assert_eq!(r.code, 1);
}

#[test]
fn core_module_is_refused() {
    let dir = scratch("core");
    let p = dir.join("core.wasm");
    std::fs::write(&p, b"\0asm\x01\0\0\0").unwrap();
    let r = wasmvisor(&["run", "--guest", &hello(), "--policy", p.to_str().unwrap()]);
    let line = r.one_error_line();
    assert_contains(&line, &["core Wasm module, not a component"]);
}

#[test]
fn component_of_another_world_is_refused() {
    let p = assets().join("fixtures/other-world.wasm");
    let r = wasmvisor(&["run", "--guest", &hello(), "--policy", p.to_str().unwrap()]);
    let line = r.one_error_line();
    assert_contains(
        &line,
        &["policy other-world.wasm does not export wasmvisor:policy/handler@0.1.0"],
    );
    let r = wasmvisor(&["policy", "inspect", p.to_str().unwrap()]);
    r.one_error_line();
}

#[test]
fn missing_guest_file() {
    let r = wasmvisor(&[
        "run",
        "--guest",
        "/nonexistent/guest.bin",
        "--policy",
        &policy("serial"),
    ]);
    let line = r.one_error_line();
    assert_contains(&line, &["/nonexistent/guest.bin"]);
    assert_contains(&line, &["No such file"]);
}

#[test]
fn guest_larger_than_ram() {
    require_kvm!();
    let dir = scratch("large");
    let p = dir.join("big.bin");
    std::fs::write(&p, vec![0xf4u8; 2 << 20]).unwrap();
    let r = wasmvisor(&["run", "--guest", p.to_str().unwrap(), "--mem", "1M"]);
    let line = r.one_error_line();
    assert_contains(&line, &["does not fit in 1048576 bytes of RAM"]);
}

#[test]
fn bad_elf_header_is_refused() {
    require_kvm!();
    let dir = scratch("badelf");
    let p = dir.join("bad.elf");
    let mut img = std::fs::read(guest("hello.elf")).unwrap();
    img[18] = 0x28; // e_machine = ARM
    std::fs::write(&p, img).unwrap();
    let r = wasmvisor(&["run", "--guest", p.to_str().unwrap()]);
    let line = r.one_error_line();
    assert_contains(&line, &["bad ELF header: not an x86-64 executable"]);
}

#[test]
fn cli_values_out_of_range() {
    for (args, needle) in [
        (vec!["--vcpus", "99"], "--vcpus 99 is out of range"),
        (vec!["--vcpus", "0"], "--vcpus 0 is out of range"),
        (vec!["--mem", "64G"], "--mem 64G is out of range"),
        (vec!["--mem", "lots"], "invalid size `lots`"),
        (vec!["--mode", "virtual86"], "invalid mode `virtual86`"),
        (vec!["--load-addr", "0xzz"], "invalid number `0xzz`"),
        (vec!["--serial", "usb"], "invalid --serial `usb`"),
        (vec!["--policy-deadline-ms", "0"], "out of range"),
    ] {
        let mut full = vec!["run", "--guest", "g.bin"];
        full.extend(args);
        let r = wasmvisor(&full);
        let line = r.one_error_line();
        assert!(line.contains(needle), "{line} lacks {needle}");
    }
    // An unknown flag is a usage error (clap, exit code 2).
    let r = wasmvisor(&["run", "--frobnicate"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn unknown_policy_config_key_is_refused() {
    require_kvm!();
    let line = Cmd::guest("hello.elf")
        .policy_with("serial", "colour=blue")
        .run()
        .one_error_line();
    assert_contains(&line, &["unknown config key `colour`"]);
}

#[test]
fn inspect_shows_name_version_and_subscriptions() {
    let r = wasmvisor(&["policy", "inspect", &policy("serial")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_contains(&r.stdout, &["name:         serial\n"]);
    assert!(
        r.stdout
            .contains("exports:      wasmvisor:policy/handler@0.1.0\n"),
        "{}",
        r.stdout
    );
    assert_contains(&r.stdout, &["  ports:        0x3f8-0x3ff\n"]);
    let r = wasmvisor(&[
        "policy",
        "inspect",
        &format!("{}:watch=0x170-0x17f,allow=0x174", policy("msr-guard")),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_contains(&r.stdout, &["  msrs:         0x170-0x17f\n"]);
}

#[test]
fn a_constant_answer_outside_the_subscriptions_is_refused() {
    let p = assets().join("fixtures/hostile.wasm");
    let spec = format!("{}:constant=0x500", p.display());
    let r = wasmvisor(&["run", "--guest", &hello(), "--policy", &spec]);
    let line = r.one_error_line();
    assert!(
        line.contains(
            "policy hostile: declares a constant answer for ports 0x500-0x500 outside its subscriptions"
        ),
        "{line}"
    );
}

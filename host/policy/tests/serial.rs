//! The real policies under the host: every built policy loads and starts,
//! and the serial policy subscribes to its UART ports and its transmitted
//! bytes reach the console.

mod common;

use common::{io, Capture, FakeVcpu};
use wasmvisor_exit::{Action, Capabilities, Direction};
use wasmvisor_policy::{Limits, PolicyError, PolicyImage, PolicyInstance, Verdict};

const FILE: &str = "serial_policy.wasm";
const BUILD: &str = "cargo build --profile policy --target wasm32-wasip2 -p serial-policy";

fn serial(capture: &Capture) -> PolicyInstance<FakeVcpu> {
    let image = common::load(FILE, BUILD);
    assert_eq!(image.name(), FILE);
    image
        .instantiate(
            capture.context("serial", 0, Capabilities::default()),
            &Limits::default(),
        )
        .expect("instantiates")
}

#[test]
fn serial_describes_itself_and_subscribes_to_its_uart() {
    let capture = Capture::new(None);
    let mut policy = serial(&capture);
    let info = policy.info().unwrap();
    assert_eq!(info.name, "serial");
    assert!(!info.version.is_empty());
    let subs = policy.init(&[]).unwrap();
    assert_eq!(subs.ports, vec![0x3f8..=0x3ff]);
    assert!(subs.unsupported().is_empty());
}

#[test]
fn serial_transmits_to_the_console_and_answers_status_reads() {
    let capture = Capture::new(None);
    let mut policy = serial(&capture);
    policy.init(&[]).unwrap();
    let mut vcpu = Some(FakeVcpu::default());
    for byte in b"hi\n" {
        let verdict = policy
            .handle_exit(&io(0x3f8, Direction::Write, u32::from(*byte)), &mut vcpu)
            .unwrap();
        assert_eq!(verdict, Verdict::Handled(Vec::new()));
    }
    assert_eq!(capture.console.text(), "hi\n");
    let lsr = policy
        .handle_exit(&io(0x3fd, Direction::Read, 0), &mut vcpu)
        .unwrap();
    assert_eq!(lsr, Verdict::Handled(vec![Action::CompleteRead(0x60)]));
    assert!(vcpu.is_some(), "the vCPU is given back");
}

#[test]
fn serial_rejects_unknown_config_keys() {
    let capture = Capture::new(None);
    let mut policy = serial(&capture);
    let err = policy
        .init(&[("baud".into(), "9600".into())])
        .expect_err("unknown key");
    assert!(matches!(err, PolicyError::InitRejected { .. }));
    assert_eq!(
        err.to_string(),
        "policy serial rejected its configuration: unknown config key `baud`"
    );
}

/// Every policy built next to the serial one loads, describes itself and
/// either accepts an empty configuration or rejects it with a reason.
#[test]
fn every_built_policy_loads_and_starts() {
    common::policy_path(FILE, BUILD);
    let mut seen = 0;
    for entry in std::fs::read_dir(common::policy_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !file.ends_with("_policy.wasm") {
            continue;
        }
        let image = PolicyImage::load(common::engine(), &path).unwrap_or_else(|e| panic!("{e}"));
        let capture = Capture::new(None);
        let mut policy: PolicyInstance<FakeVcpu> = image
            .instantiate(
                capture.context(&file, 0, Capabilities::ALL),
                &Limits::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let info = policy.info().unwrap_or_else(|e| panic!("{e}"));
        assert!(!info.name.is_empty(), "{file}");
        match policy.init(&[]) {
            Ok(_) | Err(PolicyError::InitRejected { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        seen += 1;
    }
    assert!(seen >= 1);
}

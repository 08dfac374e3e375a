//! The list-free answer (`quick-handler`): a policy built with the current
//! SDK is called through `handle-exit-quick`, and answers that need a
//! list arrive through `take-actions`; a component built before the
//! export existed (`tests/prebuilt`) is still called through `handle-exit`
//! and gives the same verdicts.

mod common;

use std::path::PathBuf;

use common::{io, vcpu, Capture, FakeVcpu};
use wasmvisor_exit::{Action, Capabilities, Direction, Exception, Reg};
use wasmvisor_policy::{Limits, PolicyImage, PolicyInstance, Verdict};

fn prebuilt(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/prebuilt")
        .join(file)
}

fn start(image: &PolicyImage, config: &[(&str, &str)]) -> PolicyInstance<FakeVcpu> {
    let capture = Capture::new(None);
    let mut p = image
        .instantiate(
            capture.context("noop", 0, Capabilities::default()),
            &Limits::default(),
        )
        .expect("instantiates");
    let config: Vec<(String, String)> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p.init(&config).expect("init");
    p
}

/// What the no-op policy answers to a read and a write of its port.
fn noop_answers(p: &mut PolicyInstance<FakeVcpu>) -> [Verdict; 2] {
    let mut v = Some(vcpu(0));
    [
        p.handle_exit(&io(0x80, Direction::Read, 0), &mut v)
            .expect("read"),
        p.handle_exit(&io(0x80, Direction::Write, 7), &mut v)
            .expect("write"),
    ]
}

#[test]
fn old_and_new_builds_of_a_policy_give_the_same_verdicts_through_either_export() {
    let engine = common::engine();
    let old = PolicyImage::load(engine, &prebuilt("noop-before-quick-handler.wasm"))
        .expect("the component built before quick-handler loads");
    let new = common::load("noop_policy.wasm", "make policies");
    assert!(!old.answers_quick(), "the old build has no quick-handler");
    assert!(new.answers_quick(), "the SDK exports quick-handler");

    let mut old = start(&old, &[("ports", "0x80")]);
    let mut new = start(&new, &[("ports", "0x80")]);
    assert!(!old.answers_quick() && new.answers_quick());
    let expected = [
        Verdict::Handled(vec![Action::CompleteRead(0)]),
        Verdict::Handled(Vec::new()),
    ];
    assert_eq!(noop_answers(&mut old), expected);
    assert_eq!(noop_answers(&mut new), expected);
}

#[test]
fn long_answers_come_through_take_actions_on_the_same_exit() {
    // The hostile fixture's GET_RAX port answers with the vCPU's RAX (one
    // complete-read, list-free); its EVERY_ACTION port answers with one of
    // each action, which needs `more` and `take-actions`.
    let image = common::load("hostile_fixture.wasm", "make policies");
    assert!(image.answers_quick());
    let mut p = start(&image, &[]);
    let mut v = Some(vcpu(0x5a));
    for round in 0..3 {
        let verdict = p
            .handle_exit(&io(0x19, Direction::Write, 0), &mut v)
            .expect("every action");
        let Verdict::Handled(actions) = verdict else {
            panic!("declined");
        };
        assert_eq!(actions.len(), 14, "round {round}: {actions:?}");
        assert_eq!(actions[2], Action::Inject(Exception::GP));
        assert_eq!(
            actions[3],
            Action::SetReg {
                reg: Reg::Rbx,
                value: 2
            }
        );
        // A list-free answer in between takes nothing left over.
        let rax = p
            .handle_exit(&io(0x11, Direction::Read, 0), &mut v)
            .expect("rax");
        assert_eq!(rax, Verdict::Handled(vec![Action::CompleteRead(0x5a)]));
    }
    assert!(v.is_some(), "the vCPU is given back");
}

//! Short ways to build the common verdicts.

use crate::{Action, Exception, StopRequest, Verdict};

/// The vector of #GP, general protection.
pub const GP_VECTOR: u8 = 13;
/// The vector of #UD, invalid opcode.
pub const UD_VECTOR: u8 = 6;

/// The bits of a `size`-byte access: `mask(2) == 0xffff`, `mask(8) == u64::MAX`.
pub fn mask(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}

impl Verdict {
    /// Not mine: the next subscriber, and finally the host's default
    /// handler, gets the exit.
    pub fn decline() -> Self {
        Verdict::Decline
    }

    /// Handled with these actions.
    pub fn handled(actions: Vec<Action>) -> Self {
        Verdict::Handled(actions)
    }

    /// Handled: a write is consumed, a debug event continues. Sent as an
    /// empty action list, which the host treats as `resume`: an empty
    /// `Vec` costs no allocation in the policy and nothing to lift in the
    /// host, about 100 ns per exit (`docs/performance.md`).
    pub fn resume() -> Self {
        Verdict::Handled(Vec::new())
    }

    /// Handled: the guest reads `value`. The host rejects a value wider
    /// than the access, so mask it (see [`complete_sized`](Self::complete_sized))
    /// unless it is known to fit.
    pub fn complete(value: u64) -> Self {
        Verdict::Handled(vec![Action::CompleteRead(value)])
    }

    /// Handled: the guest reads the low `size` bytes of `value`.
    pub fn complete_sized(value: u64, size: u8) -> Self {
        Self::complete(value & mask(size))
    }

    /// Raises exception `vector` in the guest. Vectors 8, 10-14, 17, 21,
    /// 29 and 30 need an error code, the others must have none.
    pub fn inject(vector: u8, error_code: Option<u32>) -> Self {
        Verdict::Handled(vec![Action::Inject(Exception { vector, error_code })])
    }

    /// Raises #GP(0); on an MSR exit the RDMSR/WRMSR itself faults.
    pub fn gp() -> Self {
        Self::inject(GP_VECTOR, Some(0))
    }

    /// Raises #UD.
    pub fn ud() -> Self {
        Self::inject(UD_VECTOR, None)
    }

    /// Stops the VM (needs the `stop-vm` capability); `clean` selects exit
    /// code 0 over 4.
    pub fn stop(clean: bool, reason: impl Into<String>) -> Self {
        Verdict::Handled(vec![Action::Stop(StopRequest {
            clean,
            reason: reason.into(),
        })])
    }

    /// Adds `action` to the verdict; a decline becomes a verdict handled
    /// by `action` alone.
    pub fn and(self, action: Action) -> Self {
        match self {
            Verdict::Decline => Verdict::Handled(vec![action]),
            Verdict::Handled(mut actions) => {
                actions.push(action);
                Verdict::Handled(actions)
            }
        }
    }

    /// True for [`Verdict::Decline`].
    pub fn is_decline(&self) -> bool {
        matches!(self, Verdict::Decline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reg, RegWrite};

    fn actions(v: Verdict) -> Vec<Action> {
        match v {
            Verdict::Decline => panic!("declined"),
            Verdict::Handled(a) => a,
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0), 0);
        assert_eq!(mask(1), 0xff);
        assert_eq!(mask(2), 0xffff);
        assert_eq!(mask(4), 0xffff_ffff);
        assert_eq!(mask(8), u64::MAX);
    }

    #[test]
    fn helpers() {
        assert!(Verdict::decline().is_decline());
        assert!(actions(Verdict::resume()).is_empty());
        assert!(matches!(
            actions(Verdict::complete(7))[..],
            [Action::CompleteRead(7)]
        ));
        assert!(matches!(
            actions(Verdict::complete_sized(0x1234, 1))[..],
            [Action::CompleteRead(0x34)]
        ));
        assert!(matches!(
            actions(Verdict::gp())[..],
            [Action::Inject(Exception {
                vector: 13,
                error_code: Some(0)
            })]
        ));
        assert!(matches!(
            actions(Verdict::ud())[..],
            [Action::Inject(Exception {
                vector: 6,
                error_code: None
            })]
        ));
        match &actions(Verdict::stop(true, "done"))[..] {
            [Action::Stop(s)] => assert!(s.clean && s.reason == "done"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn and_appends() {
        let set = Action::SetReg(RegWrite {
            reg: Reg::Rax,
            value: 1,
        });
        assert!(matches!(
            actions(Verdict::decline().and(set.clone()))[..],
            [Action::SetReg(_)]
        ));
        // `resume()` is the empty answer, so only the register write remains.
        assert!(matches!(
            actions(Verdict::resume().and(set))[..],
            [Action::SetReg(_)]
        ));
    }
}

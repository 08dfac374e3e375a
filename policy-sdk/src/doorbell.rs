//! The doorbell: a calling convention for guests that talk to a policy,
//! such as a fuzz target asking its fuzzer for the next input.
//!
//! The guest rings the doorbell with a 32-bit `out dx, eax` to port
//! [`PORT`] (0x0ad0), EAX holding [`MAGIC`] `| n` for call number `n`
//! and RBX, RCX, RSI, RDI holding the arguments arg0 to arg3. The policy
//! answering the port (the *listener*) reads the call with
//! [`Call::read`] and answers with [`reply`]: RAX gets a status, RBX a
//! value, through `set-reg` actions (so the listener needs the
//! `set-registers` grant). The io-exit's `data` is the call number, EAX.
//! When no policy answers, RAX keeps the call number, which is never a
//! status. The guest side, for assembly and C, is in `examples/guests`
//! (`doorbell.inc`, `wasmvisor-doorbell.h`; `docs/doorbell.md`).
//!
//! | n | call | arguments | value in RBX |
//! |---|---|---|---|
//! | 1 | [`HELLO`] | arg0: the guest's ABI version | the listener's [`VERSION`] |
//! | 2 | [`SNAPSHOT`] | none; the listener may take its snapshot baseline here, and after every reset the guest resumes right after this call | 0 |
//! | 3 | [`GET_INPUT`] | arg0: buffer GVA, arg1: its capacity; the listener writes the input there | the input's length |
//! | 4 | [`DONE`] | arg0: a result code; the iteration ended without a crash | 0 |
//! | 5 | [`CRASH`] | arg0: vector or kind, arg1: faulting RIP, arg2: extra (such as CR2) | 0 |
//! | 6 | [`LOG`] | arg0: text GVA, arg1: its length | bytes logged |
//!
//! | status (RAX) | meaning |
//! |---|---|
//! | [`OK`] = 0 | done |
//! | [`UNKNOWN_CALL`] = 1 | no such call number |
//! | [`BAD_ARGUMENT`] = 2 | an argument is out of bounds |
//! | [`BAD_ADDRESS`] = 3 | a guest address does not translate to RAM |
//! | [`NO_MORE_INPUT`] = 4 | `GET_INPUT`: the listener has nothing more to run |
//!
//! ```
//! use wasmvisor_policy_sdk::doorbell::{self, Call};
//! use wasmvisor_policy_sdk::testing::{exit, Harness};
//! use wasmvisor_policy_sdk::{Action, Capabilities, Config, Exit, IoExit, Policy, Reg,
//!                            RegWrite, Subscriptions, Verdict};
//!
//! /// Answers HELLO and counts DONE; any other call is unknown.
//! struct Listener {
//!     done: u64,
//! }
//!
//! impl Policy for Listener {
//!     const NAME: &'static str = "listener";
//!     const VERSION: &'static str = "0.1.0";
//!     const DESCRIPTION: &'static str = "a doorbell listener";
//!
//!     fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
//!         config.check_keys(&[])?;
//!         let subs = Subscriptions::new()
//!             .port(doorbell::PORT)
//!             .capabilities(Capabilities::SET_REGISTERS);
//!         Ok((Listener { done: 0 }, subs))
//!     }
//!
//!     fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
//!         match Call::read(&io) {
//!             Some(Call::Hello { .. }) => doorbell::ok(doorbell::VERSION),
//!             Some(Call::Done { .. }) => {
//!                 self.done += 1;
//!                 doorbell::ok(self.done)
//!             }
//!             Some(_) => doorbell::reply(doorbell::UNKNOWN_CALL, 0),
//!             None => Verdict::decline(),
//!         }
//!     }
//! }
//!
//! let mut h = Harness::<Listener>::new(&[]).unwrap();
//! h.host().set_reg(Reg::Rbx, 1); // arg0: the guest's ABI version
//! let hello = exit::io_write(doorbell::PORT, 4, doorbell::number(doorbell::HELLO));
//! assert_eq!(h.exit(hello), doorbell::ok(1));
//! let done = exit::io_write(doorbell::PORT, 4, doorbell::number(doorbell::DONE));
//! assert_eq!(
//!     h.exit(done),
//!     Verdict::Handled(vec![
//!         Action::SetReg(RegWrite { reg: Reg::Rax, value: doorbell::OK }),
//!         Action::SetReg(RegWrite { reg: Reg::Rbx, value: 1 }),
//!     ])
//! );
//! // Not a call: a byte write, or a dword without the magic.
//! assert!(h.exit(exit::io_write(doorbell::PORT, 1, 4)).is_decline());
//! assert!(h.exit(exit::io_write(doorbell::PORT, 4, 4)).is_decline());
//! ```

use crate::{host, Action, Direction, HostError, IoExit, Reg, RegWrite, Verdict};

/// The doorbell port.
pub const PORT: u16 = 0x0ad0;
/// The top half of every call number in EAX: `"WB"`.
pub const MAGIC: u32 = 0x5742_0000;
/// The bits of EAX that must equal [`MAGIC`].
pub const MAGIC_MASK: u32 = 0xffff_0000;
/// The listener version HELLO answers: this convention's.
pub const VERSION: u64 = 1;

/// Call 1: the guest introduces itself; arg0 is its ABI version.
pub const HELLO: u16 = 1;
/// Call 2: the point the guest resumes at after every reset.
pub const SNAPSHOT: u16 = 2;
/// Call 3: arg0 = buffer GVA, arg1 = capacity; the value is the length.
pub const GET_INPUT: u16 = 3;
/// Call 4: arg0 = result code; the iteration ended without a crash.
pub const DONE: u16 = 4;
/// Call 5: arg0 = vector or kind, arg1 = faulting RIP, arg2 = extra.
pub const CRASH: u16 = 5;
/// Call 6: arg0 = text GVA, arg1 = its length.
pub const LOG: u16 = 6;

/// Status: done.
pub const OK: u64 = 0;
/// Status: no such call number.
pub const UNKNOWN_CALL: u64 = 1;
/// Status: an argument is out of bounds.
pub const BAD_ARGUMENT: u64 = 2;
/// Status: a guest address does not translate to RAM.
pub const BAD_ADDRESS: u64 = 3;
/// Status: `GET_INPUT` has nothing more to give.
pub const NO_MORE_INPUT: u64 = 4;

/// The registers holding arg0 to arg3.
pub const ARG_REGS: [Reg; 4] = [Reg::Rbx, Reg::Rcx, Reg::Rsi, Reg::Rdi];

/// The EAX value of call `n`: [`MAGIC`] `| n`.
pub const fn number(n: u16) -> u32 {
    MAGIC | n as u32
}

/// One doorbell call, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// [`HELLO`].
    Hello {
        /// arg0: the guest's ABI version.
        version: u64,
    },
    /// [`SNAPSHOT`].
    Snapshot,
    /// [`GET_INPUT`].
    GetInput {
        /// arg0: where the input goes (guest-virtual).
        gva: u64,
        /// arg1: the most bytes the buffer holds.
        capacity: u64,
    },
    /// [`DONE`].
    Done {
        /// arg0: the guest's result code.
        code: u64,
    },
    /// [`CRASH`].
    Crash {
        /// arg0: the exception vector or another kind of failure.
        vector: u64,
        /// arg1: the faulting instruction.
        rip: u64,
        /// arg2: more about it, such as CR2 for a page fault.
        extra: u64,
    },
    /// [`LOG`].
    Log {
        /// arg0: the text (guest-virtual).
        gva: u64,
        /// arg1: its length in bytes.
        len: u64,
    },
    /// A call number this convention does not define; answer it with
    /// [`UNKNOWN_CALL`] unless the listener extends the convention.
    Unknown {
        /// The low half of EAX.
        number: u16,
        /// arg0 to arg3.
        args: [u64; 4],
    },
}

impl Call {
    /// The call EAX = `eax` names with arguments `args`; `None` when the
    /// top half of `eax` is not [`MAGIC`].
    pub fn decode(eax: u32, args: [u64; 4]) -> Option<Call> {
        if eax & MAGIC_MASK != MAGIC {
            return None;
        }
        let [a0, a1, a2, _] = args;
        Some(match eax as u16 {
            HELLO => Call::Hello { version: a0 },
            SNAPSHOT => Call::Snapshot,
            GET_INPUT => Call::GetInput {
                gva: a0,
                capacity: a1,
            },
            DONE => Call::Done { code: a0 },
            CRASH => Call::Crash {
                vector: a0,
                rip: a1,
                extra: a2,
            },
            LOG => Call::Log { gva: a0, len: a1 },
            number => Call::Unknown { number, args },
        })
    }

    /// The call an exit on [`PORT`] carries, reading the arguments from
    /// this vCPU's registers; `None` unless it is a 32-bit OUT to the
    /// port with [`MAGIC`] in the top half of EAX.
    pub fn read(io: &IoExit) -> Option<Call> {
        Self::read_on(PORT, io)
    }

    /// [`read`](Self::read) for a listener on another port.
    pub fn read_on(port: u16, io: &IoExit) -> Option<Call> {
        if io.port != port || io.size != 4 || io.direction != Direction::Write {
            return None;
        }
        if io.data & MAGIC_MASK != MAGIC {
            return None;
        }
        Self::decode(io.data, ARG_REGS.map(host::get_reg))
    }

    /// The call number, the low half of EAX.
    pub fn number(&self) -> u16 {
        match self {
            Call::Hello { .. } => HELLO,
            Call::Snapshot => SNAPSHOT,
            Call::GetInput { .. } => GET_INPUT,
            Call::Done { .. } => DONE,
            Call::Crash { .. } => CRASH,
            Call::Log { .. } => LOG,
            Call::Unknown { number, .. } => *number,
        }
    }

    /// The call's name in lower case (`get-input`), `unknown` for an
    /// undefined number.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Hello { .. } => "hello",
            Call::Snapshot => "snapshot",
            Call::GetInput { .. } => "get-input",
            Call::Done { .. } => "done",
            Call::Crash { .. } => "crash",
            Call::Log { .. } => "log",
            Call::Unknown { .. } => "unknown",
        }
    }
}

/// The answer to a call: RAX = `status`, RBX = `value` (grant:
/// set-registers).
pub fn reply(status: u64, value: u64) -> Verdict {
    let set = |reg, value| Action::SetReg(RegWrite { reg, value });
    Verdict::Handled(vec![set(Reg::Rax, status), set(Reg::Rbx, value)])
}

/// [`reply`] with status [`OK`].
pub fn ok(value: u64) -> Verdict {
    reply(OK, value)
}

/// The status for a failed guest-memory import: [`BAD_ADDRESS`] for an
/// address that does not translate to RAM (`not-mapped`,
/// `out-of-range`), [`BAD_ARGUMENT`] for anything else (a transfer that
/// is `too-large`, a grant or feature the listener lacks).
pub fn status_of(err: HostError) -> u64 {
    match err {
        HostError::NotMapped | HostError::OutOfRange => BAD_ADDRESS,
        HostError::TooLarge | HostError::NotGranted | HostError::Unsupported => BAD_ARGUMENT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exit, FakeHost};
    use crate::ExitKind;

    fn io(kind: ExitKind) -> IoExit {
        match kind {
            ExitKind::Io(io) => io,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_and_decoding() {
        assert_eq!(number(GET_INPUT), 0x5742_0003);
        let args = [10, 20, 30, 40];
        let call = |n| Call::decode(number(n), args).unwrap();
        assert_eq!(call(HELLO), Call::Hello { version: 10 });
        assert_eq!(call(SNAPSHOT), Call::Snapshot);
        assert_eq!(
            call(GET_INPUT),
            Call::GetInput {
                gva: 10,
                capacity: 20
            }
        );
        assert_eq!(call(DONE), Call::Done { code: 10 });
        assert_eq!(
            call(CRASH),
            Call::Crash {
                vector: 10,
                rip: 20,
                extra: 30
            }
        );
        assert_eq!(call(LOG), Call::Log { gva: 10, len: 20 });
        assert_eq!(call(0), Call::Unknown { number: 0, args });
        assert_eq!(
            call(0xffff),
            Call::Unknown {
                number: 0xffff,
                args
            }
        );
        assert_eq!(Call::decode(0x5743_0001, args), None);
        assert_eq!(Call::decode(1, args), None);
        for n in [HELLO, SNAPSHOT, GET_INPUT, DONE, CRASH, LOG, 7] {
            assert_eq!(call(n).number(), n);
        }
        let names: Vec<_> = (0..=7).map(|n| call(n).name()).collect();
        assert_eq!(
            names,
            [
                "unknown",
                "hello",
                "snapshot",
                "get-input",
                "done",
                "crash",
                "log",
                "unknown"
            ]
        );
    }

    #[test]
    fn read_takes_a_dword_out_and_the_argument_registers() {
        let fake = FakeHost::new();
        fake.set_reg(Reg::Rbx, 0x1000)
            .set_reg(Reg::Rcx, 64)
            .set_reg(Reg::Rsi, 3)
            .set_reg(Reg::Rdi, 4)
            .set_reg(Reg::Rdx, 99);
        fake.run(|| {
            let get = io(exit::io_write(PORT, 4, number(GET_INPUT)));
            assert_eq!(
                Call::read(&get),
                Some(Call::GetInput {
                    gva: 0x1000,
                    capacity: 64
                })
            );
            let unknown = io(exit::io_write(PORT, 4, number(9)));
            assert_eq!(
                Call::read(&unknown),
                Some(Call::Unknown {
                    number: 9,
                    args: [0x1000, 64, 3, 4]
                })
            );
            // Not calls: narrower writes, reads, no magic, another port.
            for kind in [
                exit::io_write(PORT, 2, 3),
                exit::io_write(PORT, 1, 3),
                exit::io_read(PORT, 4),
                exit::io_write(PORT, 4, 3),
                exit::io_write(PORT + 1, 4, number(HELLO)),
            ] {
                assert_eq!(Call::read(&io(kind)), None);
            }
            let other = io(exit::io_write(0x510, 4, number(DONE)));
            assert_eq!(
                Call::read_on(0x510, &other),
                Some(Call::Done { code: 0x1000 })
            );
        });
    }

    #[test]
    fn replies_set_rax_then_rbx() {
        let set = |reg, value| Action::SetReg(RegWrite { reg, value });
        assert_eq!(
            reply(BAD_ADDRESS, 7),
            Verdict::Handled(vec![set(Reg::Rax, 3), set(Reg::Rbx, 7)])
        );
        assert_eq!(ok(5), reply(OK, 5));
        assert_eq!(status_of(HostError::NotMapped), BAD_ADDRESS);
        assert_eq!(status_of(HostError::OutOfRange), BAD_ADDRESS);
        assert_eq!(status_of(HostError::TooLarge), BAD_ARGUMENT);
        assert_eq!(status_of(HostError::NotGranted), BAD_ARGUMENT);
    }
}

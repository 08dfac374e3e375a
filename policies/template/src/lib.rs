//! template: a wasmvisor policy, made by `wasmvisor policy new`.
//!
//! It answers reads of one I/O port with a fixed value and logs writes.
//! Config: `port` (default 0x510) and `value` (default 42), as in
//! `wasmvisor run --guest G --policy template.wasm:port=0x510,value=7`.
//! More: docs/writing-a-policy.md in the wasmvisor repository.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::{
    export_policy, host, Config, Direction, Exit, IoExit, Policy, Subscriptions, Verdict,
};

struct Answer {
    value: u32,
}

impl Policy for Answer {
    const NAME: &'static str = "template";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "answers one I/O port";

    /// Once per vCPU, before the guest runs: read the config, say which
    /// exits to see. Unknown keys are errors, so typos do not pass.
    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["port", "value"])?;
        let port = config.u16("port")?.unwrap_or(0x510);
        let value = config.u32("value")?.unwrap_or(42);
        Ok((Answer { value }, Subscriptions::new().port(port)))
    }

    /// Every IN and OUT on the port. Other exits go to the next policy.
    fn on_io(&mut self, _exit: &Exit, io: IoExit) -> Verdict {
        match io.direction {
            Direction::Read => Verdict::complete(u64::from(self.value)),
            Direction::Write => {
                host::info(&format!("the guest wrote {:#x}", io.data));
                Verdict::resume()
            }
        }
    }
}

export_policy!(Answer);

/// `cargo test` runs these on the host, against the SDK's fake host.
#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, Harness};

    #[test]
    fn reads_get_the_value_and_writes_go_on() {
        let mut h = Harness::<Answer>::new(&[("value", "7")]).unwrap();
        assert_eq!(h.exit(exit::io_read(0x510, 4)), Verdict::complete(7));
        assert_eq!(h.exit(exit::io_write(0x510, 1, 0x41)), Verdict::resume());
        assert!(Harness::<Answer>::new(&[("prot", "1")]).is_err());
    }
}

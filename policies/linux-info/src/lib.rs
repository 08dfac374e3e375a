//! Reports the guest Linux kernel's release, version and machine, read
//! through the guest's page tables once a console line says the kernel
//! is up.
//!
//! The strings are the kernel's own `init_uts_ns.name` (`struct
//! new_utsname`), what `uname -rvm` prints, found with the VM's kernel
//! profile: the address of `init_uts_ns` and the offsets of
//! `uts_namespace.name` and `new_utsname.{release,version,machine}`.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::json::Object;
use wasmvisor_policy_sdk::kernel::{member, symbol, Failure};
use wasmvisor_policy_sdk::{
    export_policy, host, Config, Exit, IoExit, LineTrigger, Policy, Subscriptions, Verdict,
};

/// `__NEW_UTS_LEN + 1`: each field of `struct new_utsname`.
const UTS_FIELD: u32 = 65;
/// The counter that makes the report once per VM, not once per vCPU.
const REPORTED: &str = "reported";

/// The NUL-terminated string of at most `len` bytes at `gva`.
fn read_cstring(gva: u64, len: u32, what: &str) -> Result<String, Failure> {
    let bytes = host::read_virt(gva, len)
        .map_err(|e| Failure::Other(format!("read {what} at {gva:#x}: {}", e.name())))?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// What `uname` would say.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Uname {
    init_uts_ns: u64,
    release: String,
    version: String,
    machine: String,
}

/// Reads `init_uts_ns.name` through the guest's page tables.
fn read_uname() -> Result<Uname, Failure> {
    let init_uts_ns = symbol("init_uts_ns")?;
    let name = init_uts_ns.wrapping_add(member("uts_namespace.name")?);
    let field = |f: &str| -> Result<String, Failure> {
        let path = format!("new_utsname.{f}");
        read_cstring(name.wrapping_add(member(&path)?), UTS_FIELD, &path)
    };
    Ok(Uname {
        init_uts_ns,
        release: field("release")?,
        version: field("version")?,
        machine: field("machine")?,
    })
}

/// Emits the `linux-info` event and logs it.
fn report() {
    match read_uname() {
        Ok(u) => {
            let json = Object::new()
                .str("release", &u.release)
                .str("version", &u.version)
                .str("machine", &u.machine)
                .hex("init_uts_ns", u.init_uts_ns)
                .finish();
            host::emit("linux-info", &json);
            host::info(&format!(
                "linux-info: Linux {} {} {}",
                u.release, u.version, u.machine
            ));
        }
        Err(failure) => {
            let json = Object::new().str("error", failure.message()).finish();
            host::emit("linux-info", &json);
            host::warn(&format!("linux-info: {}", failure.message()));
        }
    }
}

/// The policy: one trigger, one report.
#[derive(Debug)]
pub struct LinuxInfo {
    trigger: LineTrigger,
}

impl Policy for LinuxInfo {
    const NAME: &'static str = "linux-info";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "reports the guest Linux kernel's release, version and machine at a console line";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["at"])?;
        let trigger = LineTrigger::from_config(config)?;
        let subs = trigger.subscribe(Subscriptions::new());
        Ok((LinuxInfo { trigger }, subs))
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        // Once per VM: the first vCPU to see the line reports.
        if self.trigger.once_per_vm(&io, REPORTED) {
            report();
        }
        Verdict::Decline // the console still prints
    }
}

export_policy!(LinuxInfo);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, FakeHost, Harness, KernelProfile};
    use wasmvisor_policy_sdk::LogLevel;

    /// Where the fake kernel keeps `init_uts_ns`, and the GPA behind it.
    const UTS: u64 = 0xffff_ffff_82e1_5a60;
    const UTS_GPA: u64 = 0x2e1_5a60;
    /// `uts_namespace.name`: 0 in Linux 6.1, made up here so that the sum
    /// is tested.
    const NAME: u64 = 8;

    fn profile() -> KernelProfile {
        KernelProfile::new()
            .symbol("init_uts_ns", UTS)
            .member("uts_namespace.name", NAME)
            .member("new_utsname.release", 130)
            .member("new_utsname.version", 195)
            .member("new_utsname.machine", 260)
    }

    /// A fake Debian 6.1 kernel: `init_uts_ns` in RAM, mapped at its GVA.
    fn debian() -> FakeHost {
        let fake = FakeHost::new();
        let page = UTS & !0xfff;
        fake.map_ram(UTS_GPA & !0xfff, 0x2000)
            .map_virt(page, UTS_GPA & !0xfff, 0x2000)
            .set_kernel_profile(profile());
        let mut name = [0u8; 6 * 65];
        for (i, text) in [
            "Linux",
            "debian",
            "6.1.0-57-cloud-amd64",
            "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)",
            "x86_64",
            "(none)",
        ]
        .iter()
        .enumerate()
        {
            name[i * 65..i * 65 + text.len()].copy_from_slice(text.as_bytes());
        }
        fake.put_virt(UTS + NAME, &name);
        fake
    }

    /// Writes `text` to COM1 a byte at a time; every write is declined.
    fn print(h: &mut Harness<LinuxInfo>, text: &str) {
        for b in text.bytes() {
            let v = h.exit(exit::io_write(0x3f8, 1, u32::from(b)));
            assert!(v.is_decline());
        }
    }

    const EXPECTED: &str = r##"{"release":"6.1.0-57-cloud-amd64","version":"#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)","machine":"x86_64","init_uts_ns":"0xffffffff82e15a60"}"##;

    #[test]
    fn config_and_subscriptions() {
        let h = Harness::<LinuxInfo>::new(&[]).unwrap();
        let s = h.subscriptions();
        assert_eq!((s.ports[0].first, s.ports[0].last), (0x3f8, 0x3f8));
        assert!(s.capabilities.is_empty());
        assert_eq!(h.policy().trigger.text(), Some("Memory:"));
        let err = Harness::<LinuxInfo>::new(&[("every", "1")]).unwrap_err();
        assert_eq!(err, "unknown config key `every`");
        assert!(Harness::<LinuxInfo>::new(&[("at", "")]).is_err());
    }

    #[test]
    fn reports_once_at_the_memory_line() {
        let mut h = Harness::<LinuxInfo>::with_host(debian(), &[]).unwrap();
        print(
            &mut h,
            "[    0.000000] Linux version 6.1.0-57-cloud-amd64\r\n",
        );
        print(&mut h, "[    0.010000] Memory: 2005756K/2096632K available");
        assert!(h.host().events().is_empty());
        print(&mut h, "\r\n");
        assert_eq!(h.host().events_of("linux-info"), [EXPECTED]);
        let logs = h.host().logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].level, LogLevel::Info);
        assert_eq!(
            logs[0].msg,
            "linux-info: Linux 6.1.0-57-cloud-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09) x86_64"
        );
        print(&mut h, "Memory: again\n");
        assert_eq!(h.host().events().len(), 1);
    }

    #[test]
    fn at_init_reports_at_the_first_exit_once_per_vm() {
        let cpu0 = debian();
        let cpu1 = cpu0.for_vcpu(1);
        let mut h0 = Harness::<LinuxInfo>::with_host(cpu0, &[("at", "init")]).unwrap();
        let mut h1 = Harness::<LinuxInfo>::with_host(cpu1, &[("at", "init")]).unwrap();
        assert!(h0.exit(exit::io_read(0x3f8, 1)).is_decline());
        assert!(h1.exit(exit::io_write(0x3f8, 1, 0x41)).is_decline());
        assert_eq!(h0.host().events_of("linux-info"), [EXPECTED]);
    }

    #[test]
    fn without_a_profile_an_error_is_reported_once() {
        let fake = debian();
        fake.clear_kernel_profile();
        let mut h = Harness::<LinuxInfo>::with_host(fake, &[("at", "init")]).unwrap();
        for _ in 0..3 {
            h.exit(exit::io_write(0x3f8, 1, u32::from(b'\n')));
        }
        assert_eq!(
            h.host().events_of("linux-info"),
            [r#"{"error":"no kernel profile (boot with --kernel or pass --kernel-profile)"}"#]
        );
        assert_eq!(h.host().logs()[0].level, LogLevel::Warn);
    }

    #[test]
    fn missing_members_and_unmapped_memory_are_reported() {
        let fake = debian();
        fake.set_kernel_profile(
            KernelProfile::new()
                .symbol("init_uts_ns", UTS)
                .member("uts_namespace.name", 0),
        );
        let mut h = Harness::<LinuxInfo>::with_host(fake, &[("at", "init")]).unwrap();
        h.exit(exit::hlt());
        // Only the port exits reach the trigger.
        h.exit(exit::hlt());
        assert!(h.host().events().is_empty());
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            h.host().events_of("linux-info"),
            [r#"{"error":"the kernel profile has no member `new_utsname.release`"}"#]
        );

        let fake = FakeHost::new();
        fake.set_kernel_profile(profile());
        let mut h = Harness::<LinuxInfo>::with_host(fake, &[("at", "init")]).unwrap();
        h.exit(exit::io_read(0x3f8, 1));
        assert_eq!(
            h.host().events_of("linux-info"),
            [r#"{"error":"read new_utsname.release at 0xffffffff82e15aea: not-mapped"}"#]
        );
    }
}

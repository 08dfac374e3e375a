//! Guards one PCI device against what its guest driver programs into it.
//! Device DMA bypasses the CPU's page tables (and EPT), so the place to
//! stop a device from being told to read or write the wrong memory is
//! where the driver tells it: its configuration space and its registers.
//!
//! - Config space, through mechanism #1 (ports 0xCF8-0xCFF): the policy
//!   follows the address register and sees every data access. Registers
//!   listed in `lock` take their first write and refuse every later one
//!   (a `pci-config-denied` event); for example `lock=0x04` freezes the
//!   command register once the driver has set it up, so bus mastering
//!   cannot be turned back on or off behind the policy's back, and
//!   `lock=0x10` stops BAR 0 from being moved.
//! - The device's registers (`bar`, an MMIO range): a write to the
//!   `dma-addr` register outside `dma-window` is dropped (a `dma-denied`
//!   event), so the device keeps its previous DMA address; a write to the
//!   `doorbell` register is recorded (a `doorbell` event) and passed on.
//!
//! - At init it asks the host what it DMA-mapped for passthrough devices
//!   (`dma-mappings`) and reports it once (a `dma-mappings` event on vCPU
//!   0): the memory a passed-through device can reach whatever the
//!   guest's page tables or the policies' page protections say.
//!
//! Everything the policy does not refuse it declines, so the device (the
//! built-in PCI segment, or a passthrough device) answers as usual.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::json::{self, Object};
use wasmvisor_policy_sdk::{
    export_policy, host, Config, Direction, Exit, IoExit, MmioExit, Policy, Subscriptions, Verdict,
};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciGuard {
    /// Bus 0 slot of the guarded device (function 0).
    slot: u8,
    /// Locked config registers (dword offsets), and whether each has had
    /// its one write.
    locked: Vec<(u8, bool)>,
    /// The 0xCF8 address register, as this vCPU last wrote it.
    address: u32,
    bar: Option<(u64, u64)>,
    doorbell: Option<u64>,
    dma_addr: Option<u64>,
    dma_window: Option<(u64, u64)>,
}

impl PciGuard {
    /// The config register a data-port access reaches (any byte lane of
    /// 0xCFC-0xCFF: the same dword), if the address register points at
    /// the guarded device.
    fn register(&self) -> Option<u8> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let bus = (a >> 16) & 0xff;
        let slot = (a >> 11) & 0x1f;
        let function = (a >> 8) & 0x7;
        if !enabled || bus != 0 || slot != u32::from(self.slot) || function != 0 {
            return None;
        }
        Some((a & 0xfc) as u8)
    }

    fn config_write(&mut self, ev: &Exit, data: u32) -> Verdict {
        let Some(reg) = self.register() else {
            return Verdict::decline();
        };
        let Some(entry) = self.locked.iter_mut().find(|(r, _)| *r == reg) else {
            return Verdict::decline();
        };
        if !entry.1 {
            entry.1 = true;
            return Verdict::decline();
        }
        host::emit(
            "pci-config-denied",
            &Object::new()
                .u64("slot", self.slot.into())
                .u64("register", reg.into())
                .hex("value", data.into())
                .hex("rip", ev.rip)
                .finish(),
        );
        // Handled with no action: the write is dropped.
        Verdict::resume()
    }

    fn register_write(&mut self, ev: &Exit, offset: u64, value: u64) -> Verdict {
        if Some(offset) == self.doorbell {
            host::emit(
                "doorbell",
                &Object::new()
                    .hex("value", value)
                    .hex("rip", ev.rip)
                    .finish(),
            );
            return Verdict::decline();
        }
        if Some(offset) == self.dma_addr {
            if let Some((base, len)) = self.dma_window {
                if !(base..base + len).contains(&value) {
                    host::emit(
                        "dma-denied",
                        &Object::new()
                            .hex("address", value)
                            .hex("window-base", base)
                            .u64("window-len", len)
                            .hex("rip", ev.rip)
                            .finish(),
                    );
                    return Verdict::resume();
                }
            }
        }
        Verdict::decline()
    }
}

impl Policy for PciGuard {
    const NAME: &'static str = "pci-guard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "locks PCI config registers, audits doorbells and keeps device DMA inside a window";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        config.check_keys(&["slot", "lock", "bar", "doorbell", "dma-addr", "dma-window"])?;
        let slot = config.u64_or("slot", 1)?;
        if slot > 31 {
            return Err(format!("config key `slot`: {slot} is not a slot (0-31)"));
        }
        let mut locked = Vec::new();
        for text in config.all("lock") {
            let reg = wasmvisor_policy_sdk::parse_u64(text)
                .map_err(|e| format!("config key `lock`: {e}"))?;
            if reg > 0xfc || reg % 4 != 0 {
                return Err(format!(
                    "config key `lock`: {reg:#x} is not a dword register (0x00-0xfc, 4-aligned)"
                ));
            }
            locked.push((reg as u8, false));
        }
        let bar = config.regions("bar")?.first().copied();
        let offset = |key| -> Result<Option<u64>, String> {
            match config.u64(key)? {
                Some(o) if bar.is_none() => Err(format!("config key `{key}` ({o:#x}) needs `bar`")),
                other => Ok(other),
            }
        };
        let doorbell = offset("doorbell")?;
        let dma_addr = offset("dma-addr")?;
        let dma_window = config.regions("dma-window")?.first().copied();
        if dma_window.is_some() != dma_addr.is_some() {
            return Err("config keys `dma-addr` and `dma-window` go together".into());
        }
        report_dma_mappings();
        let mut subs = Subscriptions::new().ports(CONFIG_ADDRESS, CONFIG_DATA + 3);
        if let Some((base, len)) = bar {
            subs = subs.mmio(base, len);
        }
        let guard = PciGuard {
            slot: slot as u8,
            locked,
            address: 0,
            bar,
            doorbell,
            dma_addr,
            dma_window,
        };
        Ok((guard, subs))
    }

    fn on_io(&mut self, ev: &Exit, io: IoExit) -> Verdict {
        match (io.port, io.direction) {
            // The address register: follow it and let the bus have it.
            (CONFIG_ADDRESS, Direction::Write) if io.size == 4 => {
                self.address = io.data;
                Verdict::decline()
            }
            (p, Direction::Write) if (CONFIG_DATA..=CONFIG_DATA + 3).contains(&p) => {
                self.config_write(ev, io.data)
            }
            _ => Verdict::decline(),
        }
    }

    fn on_mmio(&mut self, ev: &Exit, mmio: MmioExit) -> Verdict {
        let Some((base, len)) = self.bar else {
            return Verdict::decline();
        };
        if mmio.direction != Direction::Write || !(base..base + len).contains(&mmio.gpa) {
            return Verdict::decline();
        }
        self.register_write(ev, mmio.gpa - base, mmio.data)
    }
}

/// Emits what the host DMA-mapped for passthrough devices, once per VM.
fn report_dma_mappings() {
    let mapped = host::dma_mappings();
    if mapped.is_empty() || host::vcpu_id() != 0 {
        return;
    }
    let ranges = mapped
        .iter()
        .map(|r| Object::new().hex("base", r.base).u64("len", r.len).finish());
    host::emit(
        "dma-mappings",
        &Object::new().raw("ranges", &json::array(ranges)).finish(),
    );
}

export_policy!(PciGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmvisor_policy_sdk::testing::{exit, Harness};

    fn select(h: &mut Harness<PciGuard>, slot: u32, reg: u32) {
        let v = h.exit(exit::io_write(
            CONFIG_ADDRESS,
            4,
            0x8000_0000 | slot << 11 | reg,
        ));
        assert!(v.is_decline());
    }

    #[test]
    fn a_locked_register_takes_one_write_and_refuses_the_rest() {
        let mut h = Harness::<PciGuard>::new(&[("lock", "0x04")]).unwrap();
        select(&mut h, 1, 0x04);
        assert!(h.exit(exit::io_write(CONFIG_DATA, 4, 6)).is_decline());
        assert_eq!(h.exit(exit::io_write(CONFIG_DATA, 4, 2)), Verdict::resume());
        let denied = h.host().events_of("pci-config-denied");
        assert_eq!(denied.len(), 1);
        assert!(denied[0].contains("\"register\":4") && denied[0].contains("\"value\":\"0x2\""));
        // Another device, another register, or a disabled address: passed on.
        select(&mut h, 2, 0x04);
        assert!(h.exit(exit::io_write(CONFIG_DATA, 4, 2)).is_decline());
        select(&mut h, 1, 0x10);
        assert!(h.exit(exit::io_write(CONFIG_DATA, 4, 2)).is_decline());
        assert!(h
            .exit(exit::io_write(CONFIG_ADDRESS, 4, 1 << 11 | 4))
            .is_decline());
        assert!(h.exit(exit::io_write(CONFIG_DATA, 4, 2)).is_decline());
    }

    #[test]
    fn dma_addresses_outside_the_window_are_dropped_and_doorbells_recorded() {
        let mut h = Harness::<PciGuard>::new(&[
            ("bar", "0xe8000000+0x1000"),
            ("doorbell", "0x08"),
            ("dma-addr", "0x10"),
            ("dma-window", "0x100000+0x100000"),
        ])
        .unwrap();
        assert!(h
            .exit(exit::mmio_write(0xe800_0010, 4, 0x10_8000))
            .is_decline());
        assert_eq!(
            h.exit(exit::mmio_write(0xe800_0010, 4, 0x6_0000)),
            Verdict::resume()
        );
        assert_eq!(
            h.host().events_of("dma-denied"),
            [r#"{"address":"0x60000","window-base":"0x100000","window-len":1048576,"rip":"0x0"}"#]
        );
        assert!(h.exit(exit::mmio_write(0xe800_0008, 4, 3)).is_decline());
        assert_eq!(
            h.host().events_of("doorbell"),
            [r#"{"value":"0x3","rip":"0x0"}"#]
        );
        assert!(h.exit(exit::mmio_read(0xe800_0010, 4)).is_decline());
    }

    #[test]
    fn the_dma_mappings_are_reported_once_at_init() {
        use wasmvisor_policy_sdk::testing::FakeHost;
        use wasmvisor_policy_sdk::GpaRange;
        let fake = FakeHost::new();
        fake.set_dma_mappings(vec![GpaRange {
            base: 0,
            len: 64 << 20,
        }]);
        let h = Harness::<PciGuard>::with_host(fake, &[]).unwrap();
        let events = h.host().events_of("dma-mappings");
        assert_eq!(events, [r#"{"ranges":[{"base":"0x0","len":67108864}]}"#]);
        // Without passthrough devices there is nothing to report.
        let h = Harness::<PciGuard>::new(&[]).unwrap();
        assert!(h.host().events_of("dma-mappings").is_empty());
    }

    #[test]
    fn config_errors_name_the_key() {
        for (pairs, word) in [
            (&[("lock", "0x05")][..], "lock"),
            (&[("slot", "40")][..], "slot"),
            (&[("doorbell", "8")][..], "needs `bar`"),
            (
                &[("bar", "0xe8000000+0x1000"), ("dma-addr", "0x10")][..],
                "go together",
            ),
            (&[("colour", "red")][..], "colour"),
        ] {
            let err = PciGuard::init(&Config::from_pairs(pairs.iter().copied())).unwrap_err();
            assert!(err.contains(word), "{pairs:?}: {err}");
        }
    }
}

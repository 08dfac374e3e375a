//! A register bank reachable by port I/O and/or MMIO: a read-only 32-bit
//! ID register at offset 0, then bytes the guest may read and write.

#![forbid(unsafe_code)]

use wasmvisor_policy_sdk::{
    export_policy, Config, Direction, Exit, IoExit, MmioExit, Policy, Subscriptions, Verdict,
};

/// The default ID: the bytes "BSVW" read little-endian.
const DEFAULT_ID: u32 = 0x5756_5342;
/// The largest bank, in bytes.
const MAX_BANK: u64 = 4096;
/// Bytes taken by the ID register.
const ID_LEN: u64 = 4;

#[derive(Debug)]
struct RegBank {
    id: u32,
    /// First port and number of ports.
    ports: Option<(u16, u64)>,
    /// MMIO base and length.
    mmio: Option<(u64, u64)>,
    /// The whole bank; bytes 0..4 are shadowed by the ID register.
    bytes: Vec<u8>,
}

impl RegBank {
    fn from_config(config: &Config) -> Result<Self, String> {
        config.check_keys(&["ports", "mmio", "id"])?;
        let ports = match config.port_ranges("ports")?[..] {
            [] => None,
            [r] => Some((r.first, u64::from(r.last - r.first) + 1)),
            _ => return Err("config key `ports`: give one range".into()),
        };
        let mmio = match config.regions("mmio")?[..] {
            [] => None,
            [r] => Some(r),
            _ => return Err("config key `mmio`: give one region".into()),
        };
        if ports.is_none() && mmio.is_none() {
            return Err("regbank needs `ports` or `mmio`".into());
        }
        let id = config.u32("id")?.unwrap_or(DEFAULT_ID);
        let len = [ports.map(|p| p.1), mmio.map(|m| m.1)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
            .min(MAX_BANK);
        Ok(RegBank {
            id,
            ports,
            mmio,
            bytes: vec![0; len as usize],
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        let mut s = Subscriptions::new();
        if let Some((first, count)) = self.ports {
            s = s.ports(first, (u64::from(first) + count - 1) as u16);
        }
        if let Some((base, len)) = self.mmio {
            s = s.mmio(base, len);
        }
        s
    }

    /// Reads `size` bytes at `offset` of a view `limit` bytes long.
    fn read(&self, offset: u64, size: u8, limit: u64) -> u64 {
        let id = self.id.to_le_bytes();
        (0..u64::from(size.min(8))).fold(0, |acc, i| {
            let at = offset + i;
            let byte = match at {
                _ if at >= limit => 0,
                0..ID_LEN => id[at as usize],
                _ => self.bytes.get(at as usize).copied().unwrap_or(0),
            };
            acc | u64::from(byte) << (8 * i)
        })
    }

    /// Writes `size` bytes of `data` at `offset` of a view `limit` bytes
    /// long; the ID register and bytes past the bank are left alone.
    fn write(&mut self, offset: u64, size: u8, data: u64, limit: u64) {
        for i in 0..u64::from(size.min(8)) {
            let at = offset + i;
            if (ID_LEN..limit).contains(&at) {
                if let Some(b) = self.bytes.get_mut(at as usize) {
                    *b = (data >> (8 * i)) as u8;
                }
            }
        }
    }

    fn access(
        &mut self,
        offset: u64,
        size: u8,
        direction: Direction,
        data: u64,
        limit: u64,
    ) -> Verdict {
        match direction {
            Direction::Read => Verdict::complete(self.read(offset, size, limit)),
            Direction::Write => {
                self.write(offset, size, data, limit);
                Verdict::resume()
            }
        }
    }
}

impl Policy for RegBank {
    const NAME: &'static str = "regbank";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "register bank with an ID register, over port I/O and MMIO";

    fn init(config: &Config) -> Result<(Self, Subscriptions), String> {
        let bank = RegBank::from_config(config)?;
        let subscriptions = bank.subscriptions();
        Ok((bank, subscriptions))
    }

    fn on_io(&mut self, _ev: &Exit, io: IoExit) -> Verdict {
        let Some((first, count)) = self.ports else {
            return Verdict::Decline;
        };
        let Some(offset) = io.port.checked_sub(first).map(u64::from) else {
            return Verdict::Decline;
        };
        if offset >= count {
            return Verdict::Decline;
        }
        self.access(offset, io.size, io.direction, io.data.into(), count)
    }

    fn on_mmio(&mut self, _ev: &Exit, mmio: MmioExit) -> Verdict {
        let Some((base, len)) = self.mmio else {
            return Verdict::Decline;
        };
        match mmio.gpa.checked_sub(base) {
            Some(offset) if offset < len => {
                self.access(offset, mmio.size, mmio.direction, mmio.data, len)
            }
            _ => Verdict::Decline,
        }
    }

    fn save_state(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let n = state.len().min(self.bytes.len());
        self.bytes[..n].copy_from_slice(&state[..n]);
        Ok(())
    }
}

export_policy!(RegBank);

#[cfg(test)]
mod tests {
    use super::*;

    const EV: Exit = Exit {
        vcpu: 0,
        seq: 0,
        rip: 0,
    };

    fn bank(pairs: &[(&str, &str)]) -> Result<RegBank, String> {
        RegBank::from_config(&pairs.iter().copied().collect())
    }

    fn io(port: u16, size: u8, direction: Direction, data: u32) -> IoExit {
        IoExit {
            port,
            size,
            direction,
            data,
        }
    }

    fn mmio(gpa: u64, size: u8, direction: Direction, data: u64) -> MmioExit {
        MmioExit {
            gpa,
            size,
            direction,
            data,
        }
    }

    #[test]
    fn config() {
        let b = bank(&[("ports", "0x500-0x50f"), ("mmio", "0xd0000000+0x2000")]).unwrap();
        assert_eq!(b.id, DEFAULT_ID);
        assert_eq!(b.bytes.len(), 4096);
        let s = b.subscriptions();
        assert_eq!((s.ports[0].first, s.ports[0].last), (0x500, 0x50f));
        assert_eq!((s.mmio[0].base, s.mmio[0].len), (0xd000_0000, 0x2000));
        assert_eq!(bank(&[("ports", "0x10-0x17")]).unwrap().bytes.len(), 8);
        assert!(bank(&[]).is_err());
        assert!(bank(&[("ports", "1-2"), ("ports", "5")]).is_err());
        assert!(bank(&[("ports", "1-2,5")]).is_err());
        assert!(bank(&[("mmio", "1+1"), ("mmio", "5+1")]).is_err());
        assert!(bank(&[("mmio", "0x1000"), ("id", "1")]).is_err());
        assert!(bank(&[("ports", "1"), ("id", "0x100000000")]).is_err());
        assert_eq!(
            bank(&[("ports", "1"), ("size", "4")]).unwrap_err(),
            "unknown config key `size`"
        );
    }

    #[test]
    fn port_access() {
        let c = Config::from_pairs([("ports", "0x500-0x50f"), ("id", "0x11223344")]);
        let (mut b, _) = RegBank::init(&c).unwrap();
        let r = |b: &mut RegBank, port, size| b.on_io(&EV, io(port, size, Direction::Read, 0));
        assert_eq!(r(&mut b, 0x500, 4), Verdict::complete(0x1122_3344));
        assert_eq!(r(&mut b, 0x501, 1), Verdict::complete(0x33));
        // The ID register ignores writes.
        b.on_io(&EV, io(0x500, 4, Direction::Write, 0xdead_beef));
        assert_eq!(r(&mut b, 0x500, 4), Verdict::complete(0x1122_3344));
        assert_eq!(
            b.on_io(&EV, io(0x504, 4, Direction::Write, 0xcafe_f00d)),
            Verdict::resume()
        );
        assert_eq!(r(&mut b, 0x504, 4), Verdict::complete(0xcafe_f00d));
        assert_eq!(r(&mut b, 0x505, 2), Verdict::complete(0xfef0));
        assert_eq!(r(&mut b, 0x503, 2), Verdict::complete(0x0d11));
        // A read running off the end sees zeros.
        b.on_io(&EV, io(0x50e, 2, Direction::Write, 0xffff));
        assert_eq!(r(&mut b, 0x50e, 4), Verdict::complete(0xffff));
        assert!(r(&mut b, 0x510, 1).is_decline());
        assert!(r(&mut b, 0x4ff, 1).is_decline());
    }

    #[test]
    fn mmio_shares_the_bank() {
        let c = Config::from_pairs([("ports", "0x500-0x50f"), ("mmio", "0xd0000000+0x1000")]);
        let (mut b, _) = RegBank::init(&c).unwrap();
        b.on_io(&EV, io(0x508, 1, Direction::Write, 0x5a));
        assert_eq!(
            b.on_mmio(&EV, mmio(0xd000_0008, 1, Direction::Read, 0)),
            Verdict::complete(0x5a)
        );
        b.on_mmio(
            &EV,
            mmio(0xd000_0100, 8, Direction::Write, 0x0102_0304_0506_0708),
        );
        assert_eq!(
            b.on_mmio(&EV, mmio(0xd000_0100, 8, Direction::Read, 0)),
            Verdict::complete(0x0102_0304_0506_0708)
        );
        assert_eq!(
            b.on_mmio(&EV, mmio(0xd000_0000, 4, Direction::Read, 0)),
            Verdict::complete(u64::from(DEFAULT_ID))
        );
        assert!(b
            .on_mmio(&EV, mmio(0xd000_1000, 1, Direction::Read, 0))
            .is_decline());
    }

    #[test]
    fn big_mmio_is_capped() {
        let (mut b, _) = RegBank::init(&Config::from_pairs([("mmio", "0x1000+0x10000")])).unwrap();
        assert_eq!(b.bytes.len(), 4096);
        b.on_mmio(&EV, mmio(0x1000 + 0x2000, 4, Direction::Write, 7));
        assert_eq!(
            b.on_mmio(&EV, mmio(0x1000 + 0x2000, 4, Direction::Read, 0)),
            Verdict::complete(0)
        );
    }

    #[test]
    fn state_round_trip() {
        let c = Config::from_pairs([("ports", "0x10-0x1f")]);
        let (mut a, _) = RegBank::init(&c).unwrap();
        a.on_io(&EV, io(0x18, 1, Direction::Write, 9));
        let (mut b, _) = RegBank::init(&c).unwrap();
        b.restore_state(&a.save_state()).unwrap();
        assert_eq!(
            b.on_io(&EV, io(0x18, 1, Direction::Read, 0)),
            Verdict::complete(9)
        );
    }
}

//! A builder over the `subscriptions` record that `init` returns.

use crate::{
    Capabilities, EventSet, GpaRange, MsrRange, PortRange, ProtectRequest, Protection,
    Subscriptions,
};

impl Default for Subscriptions {
    fn default() -> Self {
        Self::new()
    }
}

impl Subscriptions {
    /// Subscribes to nothing and asks for no capability.
    pub fn new() -> Self {
        Subscriptions {
            ports: Vec::new(),
            mmio: Vec::new(),
            msrs: Vec::new(),
            cpuid: Vec::new(),
            events: EventSet::empty(),
            protect: Vec::new(),
            capabilities: Capabilities::empty(),
        }
    }

    /// Adds the inclusive port range `first..=last`.
    pub fn ports(mut self, first: u16, last: u16) -> Self {
        self.ports.push(PortRange { first, last });
        self
    }

    /// Adds one port.
    pub fn port(self, port: u16) -> Self {
        self.ports(port, port)
    }

    /// Adds port ranges, e.g. from [`Config::port_ranges`](crate::Config::port_ranges).
    pub fn port_ranges(mut self, ranges: impl IntoIterator<Item = PortRange>) -> Self {
        self.ports.extend(ranges);
        self
    }

    /// Adds the guest-physical range `[base, base + len)`.
    pub fn mmio(mut self, base: u64, len: u64) -> Self {
        self.mmio.push(GpaRange { base, len });
        self
    }

    /// Adds the inclusive MSR range `first..=last`.
    pub fn msrs(mut self, first: u32, last: u32) -> Self {
        self.msrs.push(MsrRange { first, last });
        self
    }

    /// Adds one MSR.
    pub fn msr(self, index: u32) -> Self {
        self.msrs(index, index)
    }

    /// Adds MSR ranges, e.g. from [`Config::msr_ranges`](crate::Config::msr_ranges).
    pub fn msr_ranges(mut self, ranges: impl IntoIterator<Item = MsrRange>) -> Self {
        self.msrs.extend(ranges);
        self
    }

    /// Asks for every CPUID table entry of `function` (the leaf, EAX input)
    /// to pass through [`Policy::cpuid`](crate::Policy::cpuid). Adding a
    /// function twice has no further effect.
    pub fn cpuid(mut self, function: u32) -> Self {
        if !self.cpuid.contains(&function) {
            self.cpuid.push(function);
        }
        self
    }

    /// Adds exit kinds that have no address (HLT, shutdown, debug,
    /// memory violations).
    pub fn events(mut self, events: EventSet) -> Self {
        self.events |= events;
        self
    }

    /// Protects `[base, base + len)` in `mode` as soon as the VM is built.
    pub fn protect(mut self, base: u64, len: u64, mode: Protection) -> Self {
        self.protect.push(ProtectRequest {
            range: GpaRange { base, len },
            mode,
        });
        self
    }

    /// Asks for capabilities; the operator must grant each one.
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities |= capabilities;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_collects_everything() {
        let s = Subscriptions::new()
            .ports(0x3f8, 0x3ff)
            .port(0x80)
            .mmio(0xd000_0000, 0x1000)
            .msrs(0x10, 0x1f)
            .msr(0x175)
            .cpuid(1)
            .cpuid(0)
            .cpuid(1)
            .events(EventSet::HLT)
            .events(EventSet::SHUTDOWN)
            .protect(0x1000, 0x1000, Protection::WriteProtect)
            .capabilities(Capabilities::STOP_VM);
        let ports: Vec<_> = s.ports.iter().map(|p| (p.first, p.last)).collect();
        assert_eq!(ports, [(0x3f8, 0x3ff), (0x80, 0x80)]);
        assert_eq!((s.mmio[0].base, s.mmio[0].len), (0xd000_0000, 0x1000));
        let msrs: Vec<_> = s.msrs.iter().map(|m| (m.first, m.last)).collect();
        assert_eq!(msrs, [(0x10, 0x1f), (0x175, 0x175)]);
        assert_eq!(s.cpuid, [1, 0]);
        assert_eq!(s.events, EventSet::HLT | EventSet::SHUTDOWN);
        assert_eq!(s.protect.len(), 1);
        assert_eq!(s.protect[0].mode, Protection::WriteProtect);
        assert_eq!(s.capabilities, Capabilities::STOP_VM);
    }

    #[test]
    fn default_is_empty() {
        let s = Subscriptions::default();
        assert!(s.ports.is_empty() && s.mmio.is_empty() && s.msrs.is_empty());
        assert!(s.cpuid.is_empty() && s.protect.is_empty());
        assert!(s.events.is_empty() && s.capabilities.is_empty());
    }

    #[test]
    fn ranges_from_config() {
        let c = crate::Config::from_pairs([("p", "1-2"), ("m", "5")]);
        let s = Subscriptions::new()
            .port_ranges(c.port_ranges("p").unwrap())
            .msr_ranges(c.msr_ranges("m").unwrap());
        assert_eq!((s.ports[0].first, s.ports[0].last), (1, 2));
        assert_eq!((s.msrs[0].first, s.msrs[0].last), (5, 5));
    }
}

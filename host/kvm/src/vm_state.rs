//! The VM-wide state a snapshot carries: the in-kernel PIC and IOAPIC,
//! the PIT and the KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};

use crate::sections::{pod, Sections, SectionsError};
use crate::{KvmError, Vm};

/// The in-kernel devices' state; `irqchips` and `pit` are empty for a VM
/// without the PC platform.
#[derive(Clone)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: Option<kvm_pit_state2>,
    pub clock: kvm_clock_data,
}

const CHIPS: [(u32, &str); 3] = [
    (KVM_IRQCHIP_PIC_MASTER, "pic_master"),
    (KVM_IRQCHIP_PIC_SLAVE, "pic_slave"),
    (KVM_IRQCHIP_IOAPIC, "ioapic"),
];

impl VmState {
    pub fn encode(&self) -> Vec<u8> {
        let mut s = Sections::new();
        for (chip, (_, name)) in self.irqchips.iter().zip(CHIPS) {
            s.put(name, pod(chip));
        }
        if let Some(p) = &self.pit {
            s.put("pit", pod(p));
        }
        s.put("clock", pod(&self.clock));
        s.encode()
    }

    pub fn decode(bytes: &[u8]) -> Result<VmState, SectionsError> {
        let s = Sections::decode(bytes)?;
        let mut irqchips = Vec::new();
        for (_, name) in CHIPS {
            if let Some(b) = s.get_opt(name) {
                irqchips.push(crate::sections::from_pod(name, b)?);
            }
        }
        if !(irqchips.is_empty() || irqchips.len() == CHIPS.len()) {
            return Err(SectionsError::Missing("ioapic".into()));
        }
        Ok(VmState {
            irqchips,
            pit: s
                .get_opt("pit")
                .map(|b| crate::sections::from_pod("pit", b))
                .transpose()?,
            clock: s.pod("clock")?,
        })
    }
}

impl Vm {
    /// Reads the irqchip, PIT and clock.
    pub fn save_state(&self) -> Result<VmState, KvmError> {
        let fd = self.fd();
        let mut irqchips = Vec::new();
        let mut pit = None;
        if self.has_pc_platform() {
            for (id, _) in CHIPS {
                let mut chip = kvm_irqchip {
                    chip_id: id,
                    ..Default::default()
                };
                fd.get_irqchip(&mut chip)
                    .map_err(KvmError::ioctl("KVM_GET_IRQCHIP"))?;
                irqchips.push(chip);
            }
            pit = Some(fd.get_pit2().map_err(KvmError::ioctl("KVM_GET_PIT2"))?);
        }
        let clock = fd.get_clock().map_err(KvmError::ioctl("KVM_GET_CLOCK"))?;
        Ok(VmState {
            irqchips,
            pit,
            clock,
        })
    }

    /// Puts the irqchip, PIT and clock back; the VM must have the PC
    /// platform exactly when the state has one.
    pub fn restore_state(&self, state: &VmState) -> Result<(), KvmError> {
        if self.has_pc_platform() == state.irqchips.is_empty() {
            return Err(KvmError::BadBootState(
                "the saved VM and this one differ in having an in-kernel irqchip".into(),
            ));
        }
        let fd = self.fd();
        for chip in &state.irqchips {
            fd.set_irqchip(chip)
                .map_err(KvmError::ioctl("KVM_SET_IRQCHIP"))?;
        }
        if let Some(p) = &state.pit {
            fd.set_pit2(p).map_err(KvmError::ioctl("KVM_SET_PIT2"))?;
        }
        // KVM_SET_CLOCK takes the time only (flags such as TSC_STABLE
        // describe the source host's clock and are refused).
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        fd.set_clock(&clock)
            .map_err(KvmError::ioctl("KVM_SET_CLOCK"))
    }
}

//! KVM's GSI routing table: the in-kernel interrupt controllers' pins (what KVM sets up by
//! default) plus one MSI route per GSI a PCI device's MSI-X vector uses.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so every change writes the default
//! controller routes again followed by the MSI routes.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};

use crate::{Error, MsiMessage, Result, FIRST_MSI_GSI};

/// IOAPIC pins; GSIs below this are controller pins.
const IOAPIC_PINS: u32 = FIRST_MSI_GSI;
/// GSIs that also reach the (master or slave) 8259 PIC.
const PIC_PINS: u32 = 16;

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

fn msi(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: msg.address as u32,
                address_hi: (msg.address >> 32) as u32,
                data: msg.data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The entries KVM's default routing has (PIC for GSIs 0..16, IOAPIC for 0..24), then `msis`.
pub(crate) fn entries(msis: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let mut out = Vec::with_capacity(PIC_PINS as usize + IOAPIC_PINS as usize + msis.len());
    for gsi in 0..PIC_PINS {
        let chip = if gsi < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        out.push(irqchip(gsi, chip, gsi % 8));
    }
    for gsi in 0..IOAPIC_PINS {
        out.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    out.extend(msis.iter().map(|(&gsi, &m)| msi(gsi, m)));
    out
}

/// The table for `KVM_SET_GSI_ROUTING`.
pub(crate) fn table(msis: &BTreeMap<u32, MsiMessage>) -> Result<KvmIrqRouting> {
    let entries = entries(msis);
    KvmIrqRouting::from_entries(&entries).map_err(|_| {
        Error::BadState(format!(
            "{} interrupt routes are more than KVM takes",
            entries.len()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_controller_pins_and_adds_each_msi() {
        let mut msis = BTreeMap::new();
        msis.insert(
            30,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            },
        );
        let e = entries(&msis);
        assert_eq!(e.len(), 16 + 24 + 1);
        // GSI 9 reaches the slave PIC's pin 1 and the IOAPIC's pin 9.
        let pins: Vec<(u32, u32)> = e
            .iter()
            .filter(|x| x.gsi == 9)
            // SAFETY: these entries were built as irqchip routes.
            .map(|x| unsafe { (x.u.irqchip.irqchip, x.u.irqchip.pin) })
            .collect();
        assert_eq!(pins, [(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]);
        let last = e.last().unwrap();
        assert_eq!((last.gsi, last.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the last entry was built as an MSI route.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
        assert_eq!(table(&msis).unwrap().as_slice().len(), 41);
    }
}

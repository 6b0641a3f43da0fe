//! The ACPI hardware-reduced sleep registers the FADT points at (`SLEEP_CONTROL_REG` and
//! `SLEEP_STATUS_REG`): how the guest powers the machine off.
//!
//! Offset 0 is the sleep control register, offset 1 the sleep status register, one byte each.
//! Writing control with SLP_EN set and SLP_TYP equal to the S5 value of petrel's DSDT signals
//! poweroff through an eventfd; other sleep states are not supported and are logged.

use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Number of ports the registers span.
pub const ACPI_PM_PORT_LEN: u64 = 2;

const CONTROL_OFFSET: u64 = 0;
const STATUS_OFFSET: u64 = 1;

/// Sleep control: SLP_EN, "enter the state in SLP_TYP now".
const SLP_EN: u8 = 1 << 5;
/// Sleep control: SLP_TYP field position and width (bits 2..=4).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// The sleep control and status registers.
pub struct AcpiPm {
    s5_slp_typ: u8,
    exit_evt: EventFd,
}

impl AcpiPm {
    /// Registers that write 1 to `exit_evt` when the guest enters S5, whose SLP_TYP value
    /// (the `_S5_` package of the DSDT) is `s5_slp_typ` (only its low 3 bits count).
    pub fn new(s5_slp_typ: u8, exit_evt: EventFd) -> Self {
        Self {
            s5_slp_typ: s5_slp_typ & SLP_TYP_MASK,
            exit_evt,
        }
    }

    fn write_control(&self, value: u8) {
        if value & SLP_EN == 0 {
            return;
        }
        let slp_typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if slp_typ == self.s5_slp_typ {
            info!("acpi: guest entered S5 (poweroff)");
            if let Err(e) = self.exit_evt.write(1) {
                warn!("acpi: cannot signal the poweroff: {e}");
            }
        } else {
            info!("acpi: ignoring request for unsupported sleep type {slp_typ}");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (data.len(), offset) {
            // SLP_EN reads as 0; SLP_TYP is not kept since no sleep state but S5 exists.
            (1, CONTROL_OFFSET) => 0,
            // WAK_STS (bit 7) clear: the machine never woke from a sleep state.
            (1, STATUS_OFFSET) => 0,
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Status bits are write-1-to-clear and none is ever set, so only control matters.
        if let (&[value], CONTROL_OFFSET) = (data, offset) {
            self.write_control(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::bus::Bus;

    const CONTROL: u64 = 0x3c0;
    const STATUS: u64 = 0x3c1;

    fn fixture() -> (Bus, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut bus = Bus::new();
        let dev = AcpiPm::new(5, evt.try_clone().unwrap());
        bus.insert(Arc::new(Mutex::new(dev)), CONTROL, ACPI_PM_PORT_LEN)
            .unwrap();
        (bus, evt)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (bus, evt) = fixture();
        // What ACPICA does: clear WAK_STS, then write SLP_TYP | SLP_EN.
        assert!(bus.write(STATUS, &[0x80]));
        assert!(evt.read().is_err());
        assert!(bus.write(CONTROL, &[(5 << 2) | 0x20]));
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_nothing() {
        let (bus, evt) = fixture();
        assert!(bus.write(CONTROL, &[5 << 2]), "SLP_EN clear");
        assert!(bus.write(CONTROL, &[(3 << 2) | 0x20]), "S3");
        assert!(bus.write(CONTROL, &[(7 << 2) | 0x20]));
        assert!(bus.write(CONTROL, &[0xff]), "SLP_TYP 7");
        assert!(evt.read().is_err());
        let mut wide = [0u8; 2];
        assert!(
            bus.write(CONTROL, &[(5 << 2) | 0x20, 0]),
            "2-byte write ignored"
        );
        assert!(evt.read().is_err());
        assert!(bus.read(CONTROL, &mut wide));
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn status_reads_wak_sts_clear() {
        let (bus, _evt) = fixture();
        let mut b = [0xffu8];
        assert!(bus.read(STATUS, &mut b));
        assert_eq!(b[0] & 0x80, 0);
        assert!(bus.read(CONTROL, &mut b));
        assert_eq!(b[0], 0);
    }
}

//! The VM's devices and buses: what sits at which address, which GSI each interrupt uses, and
//! the eventfds through which devices tell the VMM to power off or reset.
//!
//! The devices outlive a guest reboot (the CMOS NVRAM and the serial output carry over); the
//! hypervisor wiring (irqfds) is redone for each new hypervisor VM.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use api::{SerialConfig, SerialMode};
use arch::layout;
use devices::acpi_pm::{AcpiPm, ACPI_PM_PORT_LEN};
use devices::debug_port::{DebugPort, DEBUG_PORT_LEN};
use devices::ged::PowerButton;
use devices::i8042::{I8042, I8042_PORT_LEN};
use devices::rtc::{Rtc, RTC_PORT_LEN};
use devices::serial::{Serial, SERIAL_PORT_LEN};
use devices::{Bus, EventFdTrigger};
use hypervisor::IoHandler;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{Error, Result};

/// Port I/O and MMIO buses, as the vCPUs see them.
#[derive(Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

impl IoHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
            log::trace!("unhandled port read {port:#x}");
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.pio.write(u64::from(port), data) {
            log::trace!("unhandled port write {port:#x} {data:x?}");
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
            log::debug!("unhandled MMIO read {addr:#x}");
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            log::debug!("unhandled MMIO write {addr:#x} {data:x?}");
        }
    }
}

/// An interrupt line: the eventfd a device writes, and the GSI the VMM routes it to.
pub struct IrqLine {
    /// The eventfd registered as irqfd.
    pub evt: EventFd,
    /// The guest GSI.
    pub gsi: u32,
}

/// The legacy devices of a petrel VM.
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    pub(crate) rtc: Arc<Mutex<Rtc>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    debug_port: Arc<Mutex<DebugPort>>,
    /// The ACPI power button (a Generic Event Device interrupt).
    pub power_button: PowerButton,
    /// Interrupt lines to wire with irqfds.
    pub irqs: Vec<IrqLine>,
}

fn new_eventfd(what: &str) -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| Error::io(format!("creating the {what} eventfd"), e))
}

pub(crate) fn clone_eventfd(evt: &EventFd, what: &str) -> Result<EventFd> {
    evt.try_clone()
        .map_err(|e| Error::io(format!("duplicating the {what} eventfd"), e))
}

/// Opens where the serial output goes.
/// The default size at which a serial output file is rotated.
pub const DEFAULT_SERIAL_MAX_BYTES: u64 = 16 << 20;

fn serial_output(cfg: &SerialConfig) -> Result<Box<dyn Write + Send>> {
    Ok(match cfg.mode {
        SerialMode::Off => Box::new(std::io::sink()),
        SerialMode::Tty => {
            // An unbuffered handle on fd 1: the serial device flushes per byte anyway, and
            // Rust's `Stdout` would add line buffering and a lock.
            let fd: OwnedFd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::io("duplicating standard output", e))?;
            Box::new(File::from(fd))
        }
        SerialMode::File => {
            let path = cfg.file.as_ref().ok_or_else(|| {
                api::ConfigError::new("serial.file", "is required with mode File")
            })?;
            // The guest decides how much it prints: the file is capped and rotated.
            let max = crate::rotating_file::cap_from_env(
                "PETREL_SERIAL_MAX_BYTES",
                DEFAULT_SERIAL_MAX_BYTES,
            );
            let f = crate::rotating_file::RotatingFile::create(path, max)
                .map_err(|e| Error::io(format!("serial file {}", path.display()), e))?;
            Box::new(f)
        }
    })
}

/// The eventfds through which devices tell the VMM about lifecycle events. They live for the
/// process, so the event loop watches the same descriptors whatever VM is built.
pub struct LifecycleEvents {
    /// Written by the guest's ACPI poweroff.
    pub exit_evt: EventFd,
    /// Written by the guest's i8042 reset.
    pub reset_evt: EventFd,
    /// Written when the guest has drained the serial receive FIFO.
    pub serial_drained: EventFd,
}

impl LifecycleEvents {
    /// Creates the eventfds.
    pub fn new() -> Result<Self> {
        Ok(LifecycleEvents {
            exit_evt: new_eventfd("poweroff")?,
            reset_evt: new_eventfd("reset")?,
            serial_drained: new_eventfd("serial input")?,
        })
    }

    /// Clears lifecycle events left from a previous boot.
    pub fn clear(&self) {
        // A read of an eventfd with nothing pending fails with EAGAIN, which is what we want.
        let _ = self.exit_evt.read();
        let _ = self.reset_evt.read();
    }
}

impl LegacyDevices {
    /// Creates the devices. `start` is the process start, for the debug port's timestamps.
    pub fn new(
        serial_cfg: &SerialConfig,
        start: std::time::Instant,
        events: &LifecycleEvents,
    ) -> Result<Self> {
        let com1 = new_eventfd("COM1 interrupt")?;
        let keyboard = new_eventfd("keyboard interrupt")?;
        let mut i8042 = I8042::new(clone_eventfd(&events.reset_evt, "reset")?);
        i8042.set_irq(clone_eventfd(&keyboard, "keyboard interrupt")?);
        let power_button = PowerButton::with_eventfd(new_eventfd("power button")?);
        let serial = Serial::with_drained_event(
            EventFdTrigger::new(clone_eventfd(&com1, "COM1 interrupt")?),
            serial_output(serial_cfg)?,
            clone_eventfd(&events.serial_drained, "serial input")?,
        );
        Ok(LegacyDevices {
            serial: Arc::new(Mutex::new(serial)),
            rtc: Arc::new(Mutex::new(Rtc::new())),
            i8042: Arc::new(Mutex::new(i8042)),
            acpi_pm: Arc::new(Mutex::new(AcpiPm::new(
                layout::ACPI_S5_SLP_TYP,
                clone_eventfd(&events.exit_evt, "poweroff")?,
            ))),
            debug_port: Arc::new(Mutex::new(DebugPort::new(start))),
            irqs: vec![
                IrqLine {
                    evt: com1,
                    gsi: layout::COM1_IRQ,
                },
                IrqLine {
                    evt: keyboard,
                    gsi: layout::I8042_KBD_IRQ,
                },
                IrqLine {
                    evt: clone_eventfd(power_button.irq_evt(), "power button")?,
                    gsi: layout::GED_GSI,
                },
            ],
            power_button,
        })
    }

    /// Presses Ctrl+Alt+Del on the i8042 keyboard (Firecracker's `SendCtrlAltDel`).
    pub fn send_ctrl_alt_del(&self) {
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_ctrl_alt_del();
    }

    /// Builds the buses with every device at its address.
    pub fn buses(&self) -> Result<Buses> {
        let mut buses = Buses::default();
        let port = |p: u16| u64::from(p);
        let entries: [(devices::bus::SharedDevice, u64, u64); 5] = [
            (
                self.serial.clone(),
                port(layout::COM1_PORT),
                SERIAL_PORT_LEN,
            ),
            (self.rtc.clone(), port(layout::RTC_PORT), RTC_PORT_LEN),
            (self.i8042.clone(), port(layout::I8042_PORT), I8042_PORT_LEN),
            (
                self.acpi_pm.clone(),
                port(layout::ACPI_SLEEP_CONTROL_PORT),
                ACPI_PM_PORT_LEN,
            ),
            (
                self.debug_port.clone(),
                port(layout::DEBUG_PORT),
                DEBUG_PORT_LEN,
            ),
        ];
        for (dev, base, len) in entries {
            buses.pio.insert(dev, base, len)?;
        }
        Ok(buses)
    }
}

//! A minimal i8042 keyboard controller with nothing plugged in: enough for the guest to reset
//! the machine (command 0xFE) and for Linux's i8042 driver to probe it without timeouts.
//!
//! Inserted at port 0x60 with length 5: offset 0 is the data port, offset 4 the status (read)
//! and command (write) port. Commands that return a byte queue it in a one-byte output buffer
//! and set OBF in the status register, so the driver never waits for its 0.5 s timeout.
//!
//! What Linux finds: the controller itself (command byte, self test), no AUX port (the AUX
//! loopback answer does not come back flagged as AUX data and the AUX interface test reports
//! a stuck clock line), and a minimal PS/2 keyboard in scancode set 2 without translation: it
//! acknowledges every command (`0xFA`), answers `GETID` with `AB 83`, reset with `AA`,
//! `F0 00` with set 2 and echo with `EE`, so `atkbd` binds at once and registers a keyboard.
//! Keyboard bytes (answers and the keys [`I8042::push_keys`] queues: Firecracker's
//! `SendCtrlAltDel`) raise the keyboard interrupt, IRQ 1, while the command byte enables it,
//! one edge per byte; controller answers do not (the driver polls for them). The DSDT
//! describes the controller (`PNP0303`, ports 0x60 and 0x64, IRQ 1), so Linux probes it.
//!
//! Offsets 1..=3 (ports 0x61..=0x63, including the PC speaker/NMI status port 0x61) are not
//! emulated: reads return 0xff, writes are dropped. 0xff is the safe answer at 0x61: Linux's PIT
//! TSC calibration loops wait there for bit 5 (PIT channel 2 output) to set.

use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Number of ports the controller spans (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Status: output buffer full (a byte is waiting at the data port).
const STATUS_OBF: u8 = 0x01;
/// Status: the waiting byte came from the AUX (mouse) port.
const STATUS_AUXDATA: u8 = 0x20;

/// Command byte: keyboard interrupt enabled.
const CTR_KBDINT: u8 = 0x01;
/// Command byte: keyboard interface disabled.
const CTR_KBDDIS: u8 = 0x10;
/// Command byte: AUX interface disabled.
const CTR_AUXDIS: u8 = 0x20;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_KBD_LOOP: u8 = 0xd2;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_AUX_SEND: u8 = 0xd4;
/// Pulse the output lines whose bit is clear in the low nibble; 0xFE pulses line 0 (reset).
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// AUX interface test answer: "clock line stuck low", i.e. no AUX port.
const INTERFACE_TEST_CLOCK_LOW: u8 = 0x01;
/// Output port: bit 0 is the (active low) CPU reset line, bit 1 the A20 gate.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

/// Keyboard: command acknowledged.
const KBD_ACK: u8 = 0xfa;
/// Keyboard commands that take a parameter byte: LEDs, scancode set, typematic rate.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_SCANSET: u8 = 0xf0;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ECHO: u8 = 0xee;
const KBD_GET_ID: u8 = 0xf2;
const KBD_RESET: u8 = 0xff;
/// Keyboard ID of an MF2 keyboard.
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// Basic assurance test passed (after a reset).
const KBD_BAT_OK: u8 = 0xaa;
/// The scancode set the keyboard speaks.
const KBD_SET: u8 = 2;

/// The i8042 controller. Reset requests write 1 to the eventfd given at construction.
pub struct I8042 {
    reset_evt: EventFd,
    /// The keyboard interrupt (IRQ 1), if wired.
    irq: Option<EventFd>,
    /// A keyboard command waiting for its parameter byte.
    kbd_pending: Option<u8>,
    /// The controller command byte (CTR).
    ctr: u8,
    /// The byte waiting at the data port, and whether it is flagged as AUX data.
    output: Option<(u8, bool)>,
    /// A command waiting for its parameter byte on the data port.
    pending: Option<u8>,
    /// Keyboard scancodes waiting for the data port, after `output`.
    keys: std::collections::VecDeque<u8>,
}

/// The controller's state for a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    /// The controller command byte.
    pub ctr: u8,
    /// The byte at the data port and whether it is AUX data.
    pub output: Option<(u8, bool)>,
    /// A command waiting for its parameter.
    pub pending: Option<u8>,
}

impl I8042 {
    /// The controller's state.
    pub fn save(&self) -> I8042Snapshot {
        I8042Snapshot {
            ctr: self.ctr,
            output: self.output,
            pending: self.pending,
        }
    }

    /// Sets the controller's state.
    pub fn restore(&mut self, s: &I8042Snapshot) {
        self.ctr = s.ctr;
        self.output = s.output;
        self.pending = s.pending;
    }
}

/// Ctrl+Alt+Del pressed and released, in scancode set 2 (what Firecracker's SendCtrlAltDel
/// puts on the keyboard port): Ctrl, Alt, Del (extended) down, then up in reverse order.
pub const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

impl I8042 {
    /// A controller with command byte 0 that signals `reset_evt` when the guest resets the
    /// machine through it.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            reset_evt,
            irq: None,
            kbd_pending: None,
            ctr: 0,
            output: None,
            pending: None,
            keys: std::collections::VecDeque::new(),
        }
    }

    /// Wires the keyboard interrupt: `irq` is written once per keyboard byte made available
    /// while the command byte enables the interrupt.
    pub fn set_irq(&mut self, irq: EventFd) {
        self.irq = Some(irq);
    }

    /// Queues keyboard scancodes; the guest reads them one by one at the data port (OBF set
    /// in the status register while one waits). Bounded: a guest that never reads loses the
    /// oldest beyond 64 bytes.
    pub fn push_keys(&mut self, codes: &[u8]) {
        let was_empty = self.keys.is_empty();
        for &c in codes {
            if self.keys.len() >= 64 {
                self.keys.pop_front();
            }
            self.keys.push_back(c);
        }
        if was_empty && !codes.is_empty() {
            self.keyboard_interrupt();
        }
    }

    /// Raises IRQ 1 if the guest enabled the keyboard interrupt.
    fn keyboard_interrupt(&self) {
        if self.ctr & CTR_KBDINT == 0 || self.ctr & CTR_KBDDIS != 0 {
            return;
        }
        if let Some(irq) = &self.irq {
            if let Err(e) = irq.write(1) {
                warn!("i8042: cannot raise the keyboard interrupt: {e}");
            }
        }
    }

    /// A byte the guest sent to the keyboard: a command or a command's parameter.
    fn keyboard(&mut self, value: u8) {
        if let Some(cmd) = self.kbd_pending.take() {
            // The parameter of LEDs, scancode set or typematic: acknowledged; `F0 00` asks
            // which set is in use.
            if cmd == KBD_SCANSET && value == 0 {
                self.push_keys(&[KBD_ACK, KBD_SET]);
            } else {
                self.push_keys(&[KBD_ACK]);
            }
            return;
        }
        // A command supersedes keys not yet read, as on a real keyboard.
        self.keys.clear();
        match value {
            KBD_SET_LEDS | KBD_SCANSET | KBD_TYPEMATIC => {
                self.kbd_pending = Some(value);
                self.push_keys(&[KBD_ACK]);
            }
            KBD_ECHO => self.push_keys(&[KBD_ECHO]),
            KBD_GET_ID => self.push_keys(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_RESET => self.push_keys(&[KBD_ACK, KBD_BAT_OK]),
            _ => self.push_keys(&[KBD_ACK]),
        }
    }

    /// Presses and releases Ctrl+Alt+Del.
    pub fn send_ctrl_alt_del(&mut self) {
        self.push_keys(&CTRL_ALT_DEL);
    }

    fn next_output(&mut self) -> Option<(u8, bool)> {
        self.output
            .take()
            .or_else(|| self.keys.pop_front().map(|k| (k, false)))
    }

    fn reset(&self) {
        debug!("i8042: guest requested a reset");
        if let Err(e) = self.reset_evt.write(1) {
            warn!("i8042: cannot signal the reset: {e}");
        }
    }

    fn reply(&mut self, value: u8) {
        self.output = Some((value, false));
    }

    fn status(&self) -> u8 {
        if self.output.is_none() && !self.keys.is_empty() {
            return STATUS_OBF;
        }
        match self.output {
            Some((_, true)) => STATUS_OBF | STATUS_AUXDATA,
            Some((_, false)) => STATUS_OBF,
            None => 0,
        }
    }

    fn command(&mut self, cmd: u8) {
        // A new command supersedes an unread answer and an unfinished one.
        self.output = None;
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            // Other internal RAM bytes read as 0.
            0x21..=0x3f => self.reply(0),
            CMD_WRITE_CTR..=0x7f
            | CMD_WRITE_OUTPUT_PORT
            | CMD_KBD_LOOP
            | CMD_AUX_LOOP
            | CMD_AUX_SEND => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUXDIS,
            CMD_AUX_TEST => self.reply(INTERFACE_TEST_CLOCK_LOW),
            CMD_SELF_TEST => self.reply(SELF_TEST_OK),
            CMD_KBD_TEST => self.reply(INTERFACE_TEST_OK),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBDDIS,
            CMD_READ_INPUT_PORT => self.reply(0),
            CMD_READ_OUTPUT_PORT => self.reply(OUTPUT_PORT_DEFAULT),
            CMD_PULSE_FIRST..=0xff => {
                if cmd & 1 == 0 {
                    self.reset();
                }
            }
            _ => debug!("i8042: ignoring command {cmd:#04x}"),
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) => {
                if value & 1 == 0 {
                    self.reset();
                }
            }
            Some(CMD_KBD_LOOP) => self.reply(value),
            // No AUX port: the echo comes back, but not flagged as AUX data, which Linux takes
            // as "no loopback" and goes on to the AUX interface test.
            Some(CMD_AUX_LOOP) => self.reply(value),
            // Internal RAM writes, AUX sends: nothing to keep, nobody to answer.
            Some(_) => {}
            None => self.keyboard(value),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (data.len(), offset) {
            (1, DATA_OFFSET) => {
                let from_keyboard = self.output.is_none();
                let value = self.next_output().map_or(0, |(v, _)| v);
                // One edge per keyboard byte: the next one, if any, raises it again.
                if from_keyboard && !self.keys.is_empty() {
                    self.keyboard_interrupt();
                }
                value
            }
            (1, COMMAND_OFFSET) => self.status(),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (data, offset) {
            (&[value], DATA_OFFSET) => self.data(value),
            (&[value], COMMAND_OFFSET) => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::bus::Bus;

    const DATA: u64 = 0x60;
    const CMD: u64 = 0x64;

    fn fixture() -> (Bus, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = I8042::new(evt.try_clone().unwrap());
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(dev)), 0x60, I8042_PORT_LEN)
            .unwrap();
        (bus, evt)
    }

    fn inb(bus: &Bus, port: u64) -> u8 {
        let mut b = [0u8];
        assert!(bus.read(port, &mut b));
        b[0]
    }

    /// What Linux's `i8042_command` does: write the command, the parameters, then wait for
    /// OBF before each answer byte (returning None where Linux would time out).
    fn command(bus: &Bus, cmd: u8, params: &[u8], answers: usize) -> Option<Vec<u8>> {
        assert_eq!(inb(bus, CMD) & 0x02, 0, "input buffer never full");
        assert!(bus.write(CMD, &[cmd]));
        for p in params {
            assert!(bus.write(DATA, &[*p]));
        }
        let mut out = Vec::new();
        for _ in 0..answers {
            if inb(bus, CMD) & STATUS_OBF == 0 {
                return None;
            }
            out.push(inb(bus, DATA));
        }
        Some(out)
    }

    #[test]
    fn reset_command_signals_the_eventfd() {
        let (bus, evt) = fixture();
        assert_eq!(inb(&bus, CMD), 0, "nothing pending");
        assert!(evt.read().is_err());
        assert!(bus.write(CMD, &[0xfe]));
        assert_eq!(evt.read().unwrap(), 1);
        // Writing the output port with the reset line low resets too; 0xff pulses nothing.
        assert!(bus.write(CMD, &[0xff]));
        assert!(evt.read().is_err());
        assert!(bus.write(CMD, &[CMD_WRITE_OUTPUT_PORT]));
        assert!(bus.write(DATA, &[0xfe]));
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn linux_probe_sequence_finds_no_aux_port() {
        let (bus, evt) = fixture();
        // i8042_flush: nothing pending.
        assert_eq!(inb(&bus, CMD), 0);
        // i8042_controller_init: read the CTR until stable, write it back.
        assert_eq!(command(&bus, 0x20, &[], 1), Some(vec![0]));
        assert_eq!(command(&bus, 0x20, &[], 1), Some(vec![0]));
        assert_eq!(command(&bus, 0x60, &[0x30], 0), Some(vec![]));
        assert_eq!(command(&bus, 0x20, &[], 1), Some(vec![0x30]));
        // i8042_check_aux: the loop answer is present but not flagged AUX ...
        assert!(bus.write(CMD, &[CMD_AUX_LOOP]));
        assert!(bus.write(DATA, &[0x5a]));
        assert_eq!(inb(&bus, CMD) & (STATUS_OBF | STATUS_AUXDATA), STATUS_OBF);
        // ... so the driver runs the AUX test without reading it, and gets "clock low".
        assert_eq!(command(&bus, CMD_AUX_TEST, &[], 1), Some(vec![0x01]));
        assert_eq!(command(&bus, CMD_SELF_TEST, &[], 1), Some(vec![0x55]));
        assert_eq!(command(&bus, CMD_KBD_TEST, &[], 1), Some(vec![0x00]));
        assert_eq!(command(&bus, CMD_KBD_ENABLE, &[], 0), Some(vec![]));
        assert_eq!(command(&bus, 0x20, &[], 1), Some(vec![0x20]));
        // The keyboard answers GETID with an MF2 keyboard's id.
        assert!(bus.write(DATA, &[0xf2]));
        let mut id = Vec::new();
        while inb(&bus, CMD) & STATUS_OBF != 0 {
            id.push(inb(&bus, DATA));
        }
        assert_eq!(id, [0xfa, 0xab, 0x83]);
        assert!(evt.read().is_err(), "no reset during the probe");
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let (bus, evt) = fixture();
        let mut w = [0u8; 2];
        assert!(bus.read(0x60, &mut w));
        assert_eq!(w, [0xff, 0xff]);
        assert!(bus.write(0x63, &[0xfe, 0xfe]));
        assert!(evt.read().is_err());
        assert_eq!(inb(&bus, 0x61), 0xff, "offsets 1..=3 are not registers");
    }

    #[test]
    fn ctrl_alt_del_reaches_the_data_port_in_order() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = Arc::new(Mutex::new(I8042::new(evt.try_clone().unwrap())));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x60, I8042_PORT_LEN).unwrap();
        assert_eq!(inb(&bus, CMD) & STATUS_OBF, 0);
        dev.lock().unwrap().send_ctrl_alt_del();
        let mut got = Vec::new();
        while inb(&bus, CMD) & STATUS_OBF != 0 {
            got.push(inb(&bus, DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL);
        // Keys do not reset the machine by themselves.
        assert!(evt.read().is_err());
    }

    /// What `atkbd` does once the controller enabled the keyboard interrupt: each command
    /// answered in full, one interrupt edge per keyboard byte; then Ctrl+Alt+Del raises it
    /// for each of its bytes.
    #[test]
    fn the_keyboard_answers_atkbd_and_interrupts_per_byte() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = Arc::new(Mutex::new(I8042::new(EventFd::new(EFD_NONBLOCK).unwrap())));
        dev.lock().unwrap().set_irq(irq.try_clone().unwrap());
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x60, I8042_PORT_LEN).unwrap();
        // Interrupt off (command byte 0): answers, but no edge.
        assert!(bus.write(DATA, &[0xf4]));
        assert_eq!(inb(&bus, DATA), 0xfa);
        assert!(irq.read().is_err());
        assert_eq!(command(&bus, 0x60, &[CTR_KBDINT], 0), Some(vec![]));
        // Reads every byte of the answer, counting interrupt edges as the handler would.
        let answer = |cmd: &[u8]| {
            let mut got = Vec::new();
            for b in cmd {
                assert!(bus.write(DATA, &[*b]));
            }
            loop {
                let edges = irq.read().unwrap_or(0);
                if inb(&bus, CMD) & STATUS_OBF == 0 {
                    assert_eq!(edges, 0, "an edge without a byte");
                    break;
                }
                assert_eq!(edges, 1, "one edge per byte");
                got.push(inb(&bus, DATA));
            }
            got
        };
        assert_eq!(answer(&[0xff]), [0xfa, 0xaa]);
        assert_eq!(answer(&[0xf2]), [0xfa, 0xab, 0x83]);
        assert_eq!(answer(&[0xed]), [0xfa]);
        assert_eq!(answer(&[0x07]), [0xfa]);
        assert_eq!(answer(&[0xf0]), [0xfa]);
        assert_eq!(answer(&[0x00]), [0xfa, 0x02]);
        assert_eq!(answer(&[0xee]), [0xee]);
        dev.lock().unwrap().send_ctrl_alt_del();
        assert_eq!(answer(&[]), CTRL_ALT_DEL);
    }
}

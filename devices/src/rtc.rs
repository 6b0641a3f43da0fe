//! A minimal MC146818 CMOS real-time clock and its 128 bytes of NVRAM, at ports 0x70 (index)
//! and 0x71 (data).
//!
//! The time registers (0x00..=0x09 and the century at 0x32) follow the host clock in UTC,
//! encoded in BCD or binary and 12 or 24 hour as status register B says; a guest that sets the
//! clock moves an offset from the host clock. No interrupt is raised (no IRQ 8), the update
//! cycle is never in progress, and every other byte is plain NVRAM that lives as long as this
//! object, so it survives an in-process guest reboot.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Number of ports the RTC spans (index and data).
pub const RTC_PORT_LEN: u64 = 2;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// The index register's bit 7 masks NMIs; the other 7 bits select the byte.
const INDEX_MASK: u8 = 0x7f;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status A: update in progress (read-only, always clear here).
const A_UIP: u8 = 0x80;
/// Status A default: 32.768 kHz time base, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;
/// Status B: SET, updates frozen while the guest writes the time.
const B_SET: u8 = 0x80;
/// Status B: DM, binary (not BCD) data.
const B_BINARY: u8 = 0x04;
/// Status B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Status B default: 24-hour, BCD.
const B_DEFAULT: u8 = B_24H;
/// Status D: VRT, the RAM and time are valid.
const D_VRT: u8 = 0x80;
/// Hours register in 12-hour mode: PM flag.
const HOUR_PM: u8 = 0x80;

const SECS_PER_DAY: i64 = 86_400;

/// A broken-down UTC time, fields as the registers hold them (decoded to binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

/// Days since 1970-01-01 of a proleptic Gregorian date; `month` in 1..=12.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
        }
    }

    /// Seconds since the epoch; out-of-range fields (a guest may write anything) carry over
    /// into the next larger unit instead of failing.
    fn to_unix(self) -> i64 {
        let months = self.month - 1;
        let year = self.year + months.div_euclid(12);
        let month = months.rem_euclid(12) + 1;
        let days = days_from_civil(year, month, 1) + self.day - 1;
        days * SECS_PER_DAY + self.hour * 3600 + self.minute * 60 + self.second
    }

    /// Day of the week as the RTC counts it: 1 is Sunday.
    fn weekday(self) -> i64 {
        // 1970-01-01 was a Thursday (Sunday = 0 gives 4).
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) + 1
    }
}

fn host_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX / 2),
    }
}

/// The CMOS RTC and NVRAM.
pub struct Rtc {
    index: u8,
    nvram: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// The time being written while status B's SET bit is on.
    frozen: Option<DateTime>,
    clock: fn() -> i64,
}

/// The RTC's registers for a snapshot: the guest's clock is kept as its offset from the host's
/// clock, so a restored guest's date is right.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcSnapshot {
    /// The selected register.
    pub index: u8,
    /// The 128 bytes of CMOS.
    pub nvram: Vec<u8>,
    /// Guest time minus host time, in seconds.
    pub offset: i64,
    /// The time being set (status B SET on), as Unix seconds.
    pub frozen: Option<i64>,
}

impl Rtc {
    /// The registers and the clock offset.
    pub fn save(&self) -> RtcSnapshot {
        RtcSnapshot {
            index: self.index,
            nvram: self.nvram.to_vec(),
            offset: self.offset,
            frozen: self.frozen.map(DateTime::to_unix),
        }
    }

    /// Sets the registers and the clock offset.
    pub fn restore(&mut self, s: &RtcSnapshot) -> Result<(), String> {
        if s.nvram.len() != self.nvram.len() {
            return Err(format!(
                "RTC NVRAM of {} bytes, expected {}",
                s.nvram.len(),
                self.nvram.len()
            ));
        }
        self.nvram.copy_from_slice(&s.nvram);
        self.index = s.index;
        self.offset = s.offset;
        self.frozen = s.frozen.map(DateTime::from_unix);
        Ok(())
    }
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// An RTC on the host clock (UTC), 24-hour BCD mode, NVRAM zeroed.
    pub fn new() -> Self {
        Self::with_clock(host_now)
    }

    fn with_clock(clock: fn() -> i64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[usize::from(REG_A)] = A_DEFAULT;
        nvram[usize::from(REG_B)] = B_DEFAULT;
        nvram[usize::from(REG_D)] = D_VRT;
        Self {
            index: 0,
            nvram,
            offset: 0,
            frozen: None,
            clock,
        }
    }

    fn reg_b(&self) -> u8 {
        self.nvram[usize::from(REG_B)]
    }

    fn now(&self) -> DateTime {
        self.frozen
            .unwrap_or_else(|| DateTime::from_unix((self.clock)().saturating_add(self.offset)))
    }

    fn set_time(&mut self, t: DateTime) {
        if self.frozen.is_some() {
            self.frozen = Some(t);
        } else {
            self.offset = t.to_unix().saturating_sub((self.clock)());
        }
    }

    fn encode(&self, v: i64) -> u8 {
        // Every caller passes a value in 0..=99; clamp anyway so nothing can wrap.
        let v = v.clamp(0, 99) as u8;
        if self.reg_b() & B_BINARY != 0 {
            v
        } else {
            (v / 10) << 4 | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> i64 {
        if self.reg_b() & B_BINARY != 0 {
            i64::from(v)
        } else {
            i64::from(v >> 4) * 10 + i64::from(v & 0x0f)
        }
    }

    fn encode_hour(&self, hour: i64) -> u8 {
        if self.reg_b() & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> i64 {
        if self.reg_b() & B_24H != 0 {
            return self.decode(v);
        }
        let pm = if v & HOUR_PM != 0 { 12 } else { 0 };
        self.decode(v & !HOUR_PM) % 12 + pm
    }

    fn read_reg(&self, reg: u8) -> u8 {
        let t = self.now();
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday()),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100)),
            REG_CENTURY => self.encode(t.year.div_euclid(100)),
            REG_A => self.nvram[usize::from(REG_A)] & !A_UIP,
            // No interrupt sources are emulated, so no flags are ever pending.
            REG_C => 0,
            REG_D => D_VRT,
            _ => self.nvram[usize::from(reg & INDEX_MASK)],
        }
    }

    fn write_reg(&mut self, reg: u8, value: u8) {
        let mut t = self.now();
        match reg {
            REG_SECONDS => t.second = self.decode(value),
            REG_MINUTES => t.minute = self.decode(value),
            REG_HOURS => t.hour = self.decode_hour(value),
            // Derived from the date.
            REG_WEEKDAY => return,
            REG_DAY => t.day = self.decode(value),
            REG_MONTH => t.month = self.decode(value),
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + self.decode(value),
            REG_CENTURY => t.year = self.decode(value) * 100 + t.year.rem_euclid(100),
            REG_A => {
                self.nvram[usize::from(REG_A)] = value & !A_UIP;
                return;
            }
            REG_B => {
                self.write_b(value);
                return;
            }
            REG_C | REG_D => return,
            _ => {
                self.nvram[usize::from(reg & INDEX_MASK)] = value;
                return;
            }
        }
        self.set_time(t);
    }

    fn write_b(&mut self, value: u8) {
        let was_set = self.reg_b() & B_SET != 0;
        let set = value & B_SET != 0;
        if set && !was_set {
            self.frozen = Some(self.now());
        }
        self.nvram[usize::from(REG_B)] = value;
        if !set {
            if let Some(t) = self.frozen.take() {
                self.set_time(t);
            }
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (data.len(), offset) {
            (1, DATA_OFFSET) => self.read_reg(self.index),
            // The index register is write-only.
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (data, offset) {
            (&[value], INDEX_OFFSET) => self.index = value & INDEX_MASK,
            (&[value], DATA_OFFSET) => self.write_reg(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bus::Bus;

    const INDEX: u64 = 0x70;
    const DATA: u64 = 0x71;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const T0: i64 = 1_709_251_198;

    fn fixed_clock() -> i64 {
        T0
    }

    fn fixture(clock: fn() -> i64) -> (Bus, Arc<Mutex<Rtc>>) {
        let rtc = Arc::new(Mutex::new(Rtc::with_clock(clock)));
        let mut bus = Bus::new();
        bus.insert(rtc.clone(), INDEX, RTC_PORT_LEN).unwrap();
        (bus, rtc)
    }

    fn cmos_read(bus: &Bus, reg: u8) -> u8 {
        assert!(
            bus.write(INDEX, &[reg | 0x80]),
            "NMI-disable bit is ignored"
        );
        let mut b = [0u8];
        assert!(bus.read(DATA, &mut b));
        b[0]
    }

    fn cmos_write(bus: &Bus, reg: u8, value: u8) {
        assert!(bus.write(INDEX, &[reg]));
        assert!(bus.write(DATA, &[value]));
    }

    #[test]
    fn civil_conversions_round_trip() {
        let t = DateTime::from_unix(T0);
        assert_eq!(
            t,
            DateTime {
                year: 2024,
                month: 2,
                day: 29,
                hour: 23,
                minute: 59,
                second: 58
            }
        );
        assert_eq!(t.to_unix(), T0);
        assert_eq!(t.weekday(), 5);
        assert_eq!(
            DateTime::from_unix(0).weekday(),
            5,
            "1970-01-01 was a Thursday"
        );
        for secs in [-1, 0, 951_782_400, 4_102_444_800, T0 + 12_345_678] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
    }

    #[test]
    fn time_reads_bcd_24h_by_default() {
        let (bus, _) = fixture(fixed_clock);
        assert_eq!(cmos_read(&bus, REG_SECONDS), 0x58);
        assert_eq!(cmos_read(&bus, REG_MINUTES), 0x59);
        assert_eq!(cmos_read(&bus, REG_HOURS), 0x23);
        assert_eq!(cmos_read(&bus, REG_WEEKDAY), 0x05);
        assert_eq!(cmos_read(&bus, REG_DAY), 0x29);
        assert_eq!(cmos_read(&bus, REG_MONTH), 0x02);
        assert_eq!(cmos_read(&bus, REG_YEAR), 0x24);
        assert_eq!(cmos_read(&bus, REG_CENTURY), 0x20);
        assert_eq!(cmos_read(&bus, REG_A) & A_UIP, 0);
        assert_eq!(cmos_read(&bus, REG_B), 0x02);
        assert_eq!(cmos_read(&bus, REG_D) & D_VRT, D_VRT);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (bus, _) = fixture(fixed_clock);
        cmos_write(&bus, REG_B, B_BINARY);
        assert_eq!(cmos_read(&bus, REG_SECONDS), 58);
        assert_eq!(cmos_read(&bus, REG_HOURS), 11 | HOUR_PM);
        assert_eq!(cmos_read(&bus, REG_YEAR), 24);
        cmos_write(&bus, REG_B, 0);
        assert_eq!(cmos_read(&bus, REG_HOURS), 0x11 | HOUR_PM);
    }

    #[test]
    fn guest_sets_the_clock_under_set_bit() {
        let (bus, rtc) = fixture(fixed_clock);
        // What Linux's mc146818_set_time does: SET, year .. seconds, clear SET.
        cmos_write(&bus, REG_B, B_DEFAULT | B_SET);
        cmos_write(&bus, REG_YEAR, 0x25);
        cmos_write(&bus, REG_MONTH, 0x04);
        cmos_write(&bus, REG_DAY, 0x30);
        cmos_write(&bus, REG_HOURS, 0x08);
        cmos_write(&bus, REG_MINUTES, 0x09);
        cmos_write(&bus, REG_SECONDS, 0x10);
        assert_eq!(cmos_read(&bus, REG_DAY), 0x30, "frozen while SET");
        cmos_write(&bus, REG_B, B_DEFAULT);
        assert_eq!(cmos_read(&bus, REG_MONTH), 0x04, "no Feb 30 normalisation");
        assert_eq!(cmos_read(&bus, REG_DAY), 0x30);
        assert_eq!(cmos_read(&bus, REG_HOURS), 0x08);
        assert_eq!(cmos_read(&bus, REG_SECONDS), 0x10);
        let expected = DateTime {
            year: 2025,
            month: 4,
            day: 30,
            hour: 8,
            minute: 9,
            second: 10,
        };
        assert_eq!(rtc.lock().unwrap().offset, expected.to_unix() - T0);
    }

    #[test]
    fn garbage_time_writes_do_not_panic() {
        let (bus, _) = fixture(fixed_clock);
        for reg in [0u8, 2, 4, 6, 7, 8, 9, 0x32] {
            for v in [0x00, 0x7f, 0x80, 0x99, 0xff] {
                cmos_write(&bus, reg, v);
                cmos_write(&bus, REG_B, v);
                let _ = cmos_read(&bus, reg);
            }
        }
    }

    #[test]
    fn nvram_is_kept_and_index_port_reads_ff() {
        let (bus, _) = fixture(host_now);
        for reg in 0x0e..0x80u8 {
            if reg != REG_CENTURY {
                cmos_write(&bus, reg, reg ^ 0xa5);
            }
        }
        // A boot counter, as the test guest keeps it.
        let boots = cmos_read(&bus, 0x34);
        cmos_write(&bus, 0x34, boots.wrapping_add(1));
        for reg in 0x0e..0x80u8 {
            let want = match reg {
                REG_CENTURY => continue,
                0x34 => (0x34 ^ 0xa5) + 1,
                _ => reg ^ 0xa5,
            };
            assert_eq!(cmos_read(&bus, reg), want, "register {reg:#x}");
        }
        // Alarm registers are plain storage too; C and D are read-only.
        cmos_write(&bus, 0x01, 0x42);
        cmos_write(&bus, REG_C, 0xff);
        cmos_write(&bus, REG_D, 0x00);
        assert_eq!(cmos_read(&bus, 0x01), 0x42);
        assert_eq!(cmos_read(&bus, REG_C), 0);
        assert_eq!(cmos_read(&bus, REG_D), D_VRT);
        let mut b = [0u8];
        assert!(bus.read(INDEX, &mut b));
        assert_eq!(b[0], 0xff);
        let mut w = [0u8; 2];
        assert!(bus.read(INDEX, &mut w));
        assert_eq!(w, [0xff, 0xff]);
    }

    #[test]
    fn host_clock_is_current() {
        let (bus, _) = fixture(host_now);
        let century = cmos_read(&bus, REG_CENTURY);
        assert!(century >= 0x20, "century {century:#x}");
    }
}

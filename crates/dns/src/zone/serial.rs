//! [`Serial`]: the SOA serial, in RFC 1982 serial-number arithmetic.

use std::cmp::Ordering;

/// The zone's SOA serial: 32 bits compared in RFC 1982 serial-number arithmetic, so that it
/// keeps increasing when it wraps around.
///
/// As CoreDNS does, a serial is the time of the zone's last change in Unix seconds; a change
/// in the same second as the previous one (or while the clock is behind the serial) takes the
/// previous serial plus one. A server that restarts stamps its first zone with the time it
/// starts, which is after every serial it answered with before, unless it saw more changes
/// than seconds went by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Serial(u32);

impl Serial {
    /// A serial with this value.
    pub fn new(value: u32) -> Self {
        Serial(value)
    }

    /// The value in the SOA record.
    pub fn value(self) -> u32 {
        self.0
    }

    /// The serial of a zone changed at `unix_seconds`: that time (modulo 2³²) when it is
    /// after `self`, else `self + 1`. Always after `self`.
    pub fn next_at(self, unix_seconds: u64) -> Serial {
        // RFC 1982 serials are 32-bit: the time is taken modulo 2^32 and compared in serial
        // arithmetic, so the truncation is the intended wrap.
        let at = Serial((unix_seconds & u64::from(u32::MAX)) as u32);
        if at.is_after(self) {
            at
        } else {
            Serial(self.0.wrapping_add(1))
        }
    }

    /// Whether `self` is after `other` in serial-number arithmetic (RFC 1982 §3.2): the
    /// distance forward is less than 2³¹. Serials exactly 2³¹ apart are unordered.
    pub fn is_after(self, other: Serial) -> bool {
        self.compare(other) == Some(Ordering::Greater)
    }

    /// The RFC 1982 order: `None` for serials exactly 2³¹ apart, which it leaves undefined.
    pub fn compare(self, other: Serial) -> Option<Ordering> {
        const HALF: u32 = 1 << 31;
        let forward = self.0.wrapping_sub(other.0);
        match forward {
            0 => Some(Ordering::Equal),
            HALF => None,
            d if d < HALF => Some(Ordering::Greater),
            _ => Some(Ordering::Less),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_time_of_the_change_when_it_is_later() {
        assert_eq!(Serial::new(100).next_at(200), Serial::new(200));
        assert_eq!(
            Serial::default().next_at(1_764_000_000).value(),
            1_764_000_000
        );
    }

    #[test]
    fn adds_one_within_the_same_second_or_when_the_clock_is_behind() {
        let s = Serial::new(1_000);
        assert_eq!(s.next_at(1_000), Serial::new(1_001));
        assert_eq!(s.next_at(999), Serial::new(1_001));
        // Three changes in one second, then the clock catches up.
        let s = s.next_at(1_000).next_at(1_000).next_at(1_000);
        assert_eq!(s, Serial::new(1_003));
        assert_eq!(s.next_at(1_002), Serial::new(1_004));
        assert_eq!(s.next_at(1_010), Serial::new(1_010));
    }

    #[test]
    fn every_next_serial_is_after_the_previous_one_across_the_wrap() {
        let mut s = Serial::new(u32::MAX - 2);
        for _ in 0..6 {
            let next = s.next_at(u64::from(u32::MAX) - 2);
            assert!(next.is_after(s), "{next:?} after {s:?}");
            assert!(!s.is_after(next));
            s = next;
        }
        assert_eq!(s, Serial::new(3));
        // Times past 2^32 seconds (the year 2106) wrap as serials do.
        let t = (1u64 << 32) + 5;
        assert_eq!(Serial::new(u32::MAX).next_at(t), Serial::new(5));
    }

    #[test]
    fn compares_in_serial_number_arithmetic() {
        assert!(Serial::new(1).is_after(Serial::new(u32::MAX)));
        assert!(Serial::new(0x7fff_ffff).is_after(Serial::new(0)));
        assert_eq!(Serial::new(1 << 31).compare(Serial::new(0)), None);
        assert!(!Serial::new(1 << 31).is_after(Serial::new(0)));
        assert_eq!(
            Serial::new(7).compare(Serial::new(7)),
            Some(Ordering::Equal)
        );
        assert_eq!(Serial::new(5).compare(Serial::new(9)), Some(Ordering::Less));
    }
}

//! Interval schedules: the instants `anchor + k × period`, for every integer
//! `k`, on the real (UTC) time line.
//!
//! The arithmetic is done in whole nanoseconds in `i128`, which holds any
//! `chrono` instant and any `Duration` with room to spare: nothing here can
//! overflow, and an instant outside `chrono`'s range comes back as `None`.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::ScheduleError;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The shortest period accepted.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// A fixed period and the grid it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Interval {
    period: Duration,
    anchor: DateTime<Utc>,
}

impl Interval {
    /// Every `period`, on the grid through the Unix epoch.
    pub(super) fn new(period: Duration) -> Result<Interval, ScheduleError> {
        if period.is_zero() {
            return Err(ScheduleError::ZeroInterval);
        }
        if period < MIN_PERIOD {
            return Err(ScheduleError::IntervalTooShort { period });
        }
        Ok(Interval {
            period,
            anchor: DateTime::UNIX_EPOCH,
        })
    }

    /// The same period on the grid through `anchor`.
    pub(super) fn anchored_at(self, anchor: DateTime<Utc>) -> Interval {
        Interval { anchor, ..self }
    }

    /// The first grid point strictly after `after`.
    pub(super) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let period = self.period_nanos();
        let since_anchor = nanos(after) - nanos(self.anchor);
        let k = since_anchor.div_euclid(period) + 1;
        instant(nanos(self.anchor) + k * period)
    }

    /// The last grid point at or before `at`.
    pub(super) fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let period = self.period_nanos();
        let since_anchor = nanos(at) - nanos(self.anchor);
        let k = since_anchor.div_euclid(period);
        instant(nanos(self.anchor) + k * period)
    }

    fn period_nanos(&self) -> i128 {
        // At most about 1.8e28 (`Duration::MAX`), far below `i128::MAX`; at
        // least a million (`MIN_PERIOD`), so never a zero divisor.
        i128::try_from(self.period.as_nanos()).unwrap_or(i128::MAX)
    }
}

/// Nanoseconds since the Unix epoch.
fn nanos(at: DateTime<Utc>) -> i128 {
    i128::from(at.timestamp()) * NANOS_PER_SECOND + i128::from(at.timestamp_subsec_nanos())
}

/// The instant `nanos` nanoseconds after the Unix epoch, if `chrono` can hold it.
fn instant(nanos: i128) -> Option<DateTime<Utc>> {
    let seconds = i64::try_from(nanos.div_euclid(NANOS_PER_SECOND)).ok()?;
    let subsec = u32::try_from(nanos.rem_euclid(NANOS_PER_SECOND)).ok()?;
    DateTime::from_timestamp(seconds, subsec)
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every {}", HumanDuration(self.period))?;
        if self.anchor != DateTime::UNIX_EPOCH {
            write!(
                f,
                " (grid through {})",
                self.anchor.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            )?;
        }
        Ok(())
    }
}

/// A duration as `1d 2h 3min 4s 5ms` (zero parts left out).
struct HumanDuration(Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.as_secs();
        let subsec = self.0.subsec_nanos();
        let parts = [
            (seconds / 86_400, "d"),
            (seconds / 3_600 % 24, "h"),
            (seconds / 60 % 60, "min"),
            (seconds % 60, "s"),
            (u64::from(subsec / 1_000_000), "ms"),
            (u64::from(subsec / 1_000 % 1_000), "µs"),
            (u64::from(subsec % 1_000), "ns"),
        ];
        let mut first = true;
        for (value, unit) in parts {
            if value == 0 {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{value}{unit}")?;
            first = false;
        }
        if first {
            f.write_str("0s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("test instant")
    }

    #[test]
    fn zero_and_sub_millisecond_periods_are_errors() {
        assert_eq!(
            Interval::new(Duration::ZERO),
            Err(ScheduleError::ZeroInterval)
        );
        assert_eq!(
            Interval::new(Duration::from_micros(999)),
            Err(ScheduleError::IntervalTooShort {
                period: Duration::from_micros(999)
            })
        );
        assert!(Interval::new(Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn grid_points_go_through_the_epoch_by_default() {
        let every_5min = Interval::new(Duration::from_secs(300)).expect("valid");
        assert_eq!(
            every_5min.next_after(utc(2026, 3, 1, 10, 2, 17)),
            Some(utc(2026, 3, 1, 10, 5, 0))
        );
        // Strictly after: a grid point is not its own successor.
        assert_eq!(
            every_5min.next_after(utc(2026, 3, 1, 10, 5, 0)),
            Some(utc(2026, 3, 1, 10, 10, 0))
        );
        // Inclusive backwards.
        assert_eq!(
            every_5min.last_at_or_before(utc(2026, 3, 1, 10, 5, 0)),
            Some(utc(2026, 3, 1, 10, 5, 0))
        );
        assert_eq!(
            every_5min.last_at_or_before(utc(2026, 3, 1, 10, 4, 59)),
            Some(utc(2026, 3, 1, 10, 0, 0))
        );

        let every_second = Interval::new(Duration::from_secs(1)).expect("valid");
        let half_past = utc(2026, 3, 1, 10, 0, 0) + chrono::Duration::milliseconds(500);
        assert_eq!(
            every_second.next_after(half_past),
            Some(utc(2026, 3, 1, 10, 0, 1))
        );
        assert_eq!(
            every_second.last_at_or_before(half_past),
            Some(utc(2026, 3, 1, 10, 0, 0))
        );
    }

    #[test]
    fn the_grid_extends_before_the_epoch_and_the_anchor() {
        let hourly = Interval::new(Duration::from_secs(3600)).expect("valid");
        assert_eq!(
            hourly.next_after(utc(1969, 12, 31, 22, 30, 0)),
            Some(utc(1969, 12, 31, 23, 0, 0))
        );
        let anchor = utc(2026, 1, 1, 0, 7, 0);
        let anchored = hourly.anchored_at(anchor);
        assert_eq!(
            anchored.next_after(utc(2025, 12, 31, 12, 0, 0)),
            Some(utc(2025, 12, 31, 12, 7, 0))
        );
        assert_eq!(
            anchored.last_at_or_before(anchor - chrono::Duration::seconds(1)),
            Some(utc(2025, 12, 31, 23, 7, 0))
        );
    }

    #[test]
    fn anchor_shifts_the_grid() {
        let anchor = utc(2026, 6, 1, 0, 0, 7);
        let every_10s = Interval::new(Duration::from_secs(10))
            .expect("valid")
            .anchored_at(anchor);
        assert_eq!(
            every_10s.next_after(anchor),
            Some(utc(2026, 6, 1, 0, 0, 17))
        );
        assert_eq!(
            every_10s.next_after(utc(2026, 6, 2, 12, 0, 0)),
            Some(utc(2026, 6, 2, 12, 0, 7))
        );
        assert_eq!(every_10s.last_at_or_before(anchor), Some(anchor));
    }

    #[test]
    fn extreme_instants_and_periods_do_not_panic() {
        let huge = Interval::new(Duration::MAX).expect("valid");
        let tiny = Interval::new(MIN_PERIOD).expect("valid");
        for interval in [huge, tiny, tiny.anchored_at(DateTime::<Utc>::MAX_UTC)] {
            for at in [
                DateTime::<Utc>::MIN_UTC,
                DateTime::<Utc>::MAX_UTC,
                DateTime::UNIX_EPOCH,
            ] {
                let _ = interval.next_after(at);
                let _ = interval.last_at_or_before(at);
            }
        }
        assert_eq!(tiny.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert_eq!(huge.next_after(DateTime::UNIX_EPOCH), None);
        assert_eq!(
            huge.last_at_or_before(DateTime::UNIX_EPOCH),
            Some(DateTime::UNIX_EPOCH)
        );
    }

    #[test]
    fn display_is_compact() {
        let show = |period| Interval::new(period).expect("valid").to_string();
        assert_eq!(show(Duration::from_secs(5)), "every 5s");
        assert_eq!(show(Duration::from_secs(300)), "every 5min");
        assert_eq!(show(Duration::from_secs(5400)), "every 1h 30min");
        assert_eq!(show(Duration::from_secs(86_400 * 7)), "every 7d");
        assert_eq!(show(Duration::from_millis(1500)), "every 1s 500ms");
        let anchored = Interval::new(Duration::from_secs(60))
            .expect("valid")
            .anchored_at(utc(2026, 1, 1, 0, 0, 30));
        assert_eq!(
            anchored.to_string(),
            "every 1min (grid through 2026-01-01T00:00:30Z)"
        );
    }
}

//! [`RateLimit`]: at most `count` runs of a task type per period, per worker
//! (Celery's `rate_limit = "10/s"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A task rate: `count` runs per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Runs allowed per period (at least 1).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl RateLimit {
    /// `count` runs per `period` (usable in `const` context).
    pub const fn new(count: u32, period: Duration) -> Self {
        Self { count, period }
    }

    /// The time between two runs at this rate.
    pub fn interval(&self) -> Duration {
        self.period / self.count.max(1)
    }
}

/// A rate that is not `<count>/<s|m|h>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit `{0}`: expected `<count>/s`, `<count>/m` or `<count>/h` with count ≥ 1, e.g. \"10/s\"")]
pub struct InvalidRateLimit(pub String);

impl FromStr for RateLimit {
    type Err = InvalidRateLimit;

    /// Parses Celery's notation: `"10/s"`, `"100/m"`, `"1000/h"` (a bare
    /// number means per second).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRateLimit(text.to_owned());
        let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        if count == 0 {
            return Err(invalid());
        }
        Ok(Self::new(count, period))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => return write!(f, "{}/{:?}", self.count, self.period),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_notation_parses() {
        assert_eq!(
            "10/s".parse(),
            Ok(RateLimit::new(10, Duration::from_secs(1)))
        );
        assert_eq!(
            "100/m".parse::<RateLimit>().unwrap().interval(),
            Duration::from_millis(600)
        );
        assert_eq!("1000/h".parse::<RateLimit>().unwrap().to_string(), "1000/h");
        assert_eq!("5".parse(), Ok(RateLimit::new(5, Duration::from_secs(1))));
        for bad in ["", "0/s", "x/s", "10/d", "-1/s"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }
}

//! [`ScheduleError`]: why a schedule could not be built.

use std::time::Duration;

/// Why a [`Schedule`](super::Schedule) could not be built.
///
/// The messages are full sentences about the schedule alone; a caller that
/// knows which entry it belongs to puts the entry's name in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A cron expression that croner rejects: wrong number of fields, a value
    /// out of range, unknown syntax.
    #[error("invalid cron expression '{expression}': {reason}")]
    InvalidCron {
        /// The expression as given (for a Celery crontab whose translation
        /// croner rejected: the translated expression).
        expression: String,
        /// What is wrong with it, naming the field when one is at fault.
        reason: String,
    },
    /// A field of a Celery [`Crontab`](super::Crontab) that Celery's
    /// `crontab(...)` would reject, or that uses syntax only the standard
    /// form accepts.
    #[error("invalid Celery crontab field {field}='{value}': {reason}")]
    CeleryField {
        /// The field's name, as Celery spells it (`minute`, `hour`,
        /// `day_of_week`, `day_of_month`, `month_of_year`).
        field: &'static str,
        /// The field's value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A time zone name that is not in the IANA time zone database.
    #[error(
        "unknown time zone '{0}': expected an IANA time zone name such as 'Europe/Paris', \
         'America/New_York' or 'UTC' (names are case-sensitive)"
    )]
    UnknownTimeZone(String),
    /// An interval of zero.
    #[error("the interval is zero: an interval schedule needs a period of at least 1 ms")]
    ZeroInterval,
    /// An interval shorter than a millisecond (but not zero).
    #[error("the interval {period:?} is too short: an interval schedule needs a period of at least 1 ms")]
    IntervalTooShort {
        /// The period given.
        period: Duration,
    },
}

//! A [`Schedule`] answers two questions about a periodic entry: when is it
//! next due after a given instant ([`Schedule::next_after`]), and when was
//! it last due at or before one ([`Schedule::last_at_or_before`], to find
//! missed runs). Both are pure functions of the instant passed in; nothing
//! here reads the clock or sleeps.
//!
//! A schedule is one of:
//!
//! - a cron expression in the standard form, [`Schedule::cron`];
//! - a Celery `crontab(...)`, [`Schedule::celery`] with a [`Crontab`];
//! - a fixed interval on a grid, [`Schedule::every`];
//! - a single instant, [`Schedule::once`].
//!
//! Cron schedules are evaluated in UTC unless given a time zone
//! ([`Schedule::in_timezone`], [`Schedule::in_tz`]). All cron parsing and
//! searching is done by [croner](https://docs.rs/croner).
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use task_core::schedule::{Crontab, Schedule};
//!
//! let nightly = Schedule::cron("0 3 * * *")?.in_timezone("Europe/Paris")?;
//! let after = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap();
//! // 03:00 in Paris is 01:00 UTC in summer.
//! assert_eq!(
//!     nightly.next_after(after),
//!     Some(Utc.with_ymd_and_hms(2026, 7, 2, 1, 0, 0).unwrap())
//! );
//!
//! let weekdays = Schedule::celery(&Crontab::new().minute("30").hour("7").day_of_week("mon-fri"))?;
//! assert_eq!(weekdays.to_string(), "celery crontab(minute='30', hour='7', day_of_week='mon-fri') (UTC)");
//! # Ok::<(), task_core::schedule::ScheduleError>(())
//! ```
//!
//! # The two cron forms
//!
//! The standard form is cron as most tools write it, with croner's
//! extensions. The Celery form is for carrying over `beat_schedule` entries
//! written with Celery's `crontab(...)`: it means what it meant in Celery,
//! which differs from standard cron in several places.
//!
//! | | Standard: [`Schedule::cron`] | Celery: [`Schedule::celery`] |
//! |---|---|---|
//! | Fields | `m h dom mon dow`, or `s m h dom mon dow` (seconds first) | `minute`, `hour`, `day_of_week`, `day_of_month`, `month_of_year` (minutes at the finest); [`Crontab::from_string`] reads `m h dom mon dow` |
//! | Day of month and day of week both restricted | a day matching **either** is due (Vixie cron) | a day must match **both** (`day_of_week='mon'`, `day_of_month='1-7'`: the first Monday) |
//! | Day of week `7` | Sunday, like `0` | rejected (Celery takes 0-6, Sunday = 0) |
//! | Range `a-b` with `b < a` | rejected | wraps past the end: hour `22-2` is 22, 23, 0, 1, 2 |
//! | Names | `jan`-`dec`, `sun`-`sat` | `sun`-`sat` in `day_of_week`, `jan`-`dec` in `month_of_year`, also longer (`monday`, `march`) |
//! | Syntax | `*`, `n`, `a-b`, `*/s`, `a-b/s`, lists, croner's `L`, `W`, `#`, `?`, `+` and `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly` | `*`, `n`, `a-b`, `*/s`, `a-b/s`, lists; croner's extensions are rejected |
//!
//! In the standard form, croner's `+` before the day of week (`0 9 1-7 * +1`)
//! ANDs the two day fields for that one expression, as the Celery form
//! always does.
//!
//! In both forms, `*/s` counts from the field's first value (`*/3` in days
//! of the month is 1, 4, 7, …), and the day of week `*/2` is 0, 2, 4, 6 (days
//! whose number is even, not every other day). A schedule whose fields can
//! never meet (`0 0 30 2 *`) is accepted and is simply never due.
//!
//! ## The Celery-form rewrite
//!
//! croner implements the standard form only, and the two forms disagree on
//! inputs each accepts: croner takes `7`, `L` or `@daily` where Celery would
//! raise, and rejects the wrapping ranges Celery takes. So a [`Crontab`] is
//! not handed to croner as is: each field is first checked against what
//! Celery's `crontab_parser` accepts (syntax, ranges, `7`, croner-only
//! syntax), day and month names become numbers, and a wrapping range becomes
//! two ordinary ranges (`22-2` → `22-23,0-2`; with a step, the second range
//! starts where Celery's step lands, `21-2/2` → `21-23/2,1-2/2`). The
//! resulting `m h dom mon dow` text is parsed by croner with its days-ANDed
//! option. That check and rewrite is the only cron text this crate handles
//! itself; parsing, matching and searching are croner's in both forms.
//!
//! Two Celery quirks are not carried over: Celery reads a name in any field
//! (`minute='mon'` is 1) and any word whose first three letters are a name
//! (`'monkey'` is Monday); here names are taken in their own field only and
//! must be a prefix of the full name (`mon`, `tues`, `thursday`).
//!
//! # Time zones and daylight saving time
//!
//! A cron schedule is evaluated on the wall clock of its zone, UTC by
//! default. Where the clock jumps, croner follows the OCPS rules, which
//! depend on whether the job is *fixed-time* (its second, minute and hour
//! are each one plain value, as in `30 2 * * *`) or not (a wildcard, step,
//! range or list in any of them, as in `*/15 * * * *` or `0 1-3 * * *`):
//!
//! - **Clock goes forward** (a gap, e.g. Europe/Paris 2026-03-29, 02:00 →
//!   03:00): a fixed-time job whose time falls in the gap runs once, at the
//!   first instant after the gap (`30 2 * * *` runs at 03:00 local); other
//!   jobs skip the times that do not exist.
//! - **Clock goes back** (an overlap, e.g. Europe/Paris 2026-10-25, 03:00 →
//!   02:00): a fixed-time job runs once, at the earlier of the two instants
//!   (`30 2 * * *` at 02:30 summer time); other jobs run at both (`*/15` runs
//!   at 02:00, 02:15, 02:30, 02:45 twice).
//!
//! Celery computes these hours with its own local-time arithmetic, which
//! does not follow these rules; Celery-form schedules here follow the rules
//! above.
//!
//! # Intervals
//!
//! [`Schedule::every`] is due at `anchor + k × period` for every integer
//! `k`: a grid on the real time line, through the Unix epoch unless
//! [anchored][`Schedule::anchored_at`] elsewhere. Every process computes the
//! same grid, so `every(1s)` is due on whole seconds and `every(5min)` at
//! :00, :05, :10, … whoever asks and whenever it started. The anchor sets
//! only where the grid lies: the grid runs before it as well. Time zones do
//! not affect intervals (an hour is 3600 real seconds, also across a clock
//! change).
//!
//! # Limits
//!
//! croner searches the years 1 to 5000 only. For a cron schedule,
//! [`Schedule::next_after`] answers `None` from the last second of year 4999
//! on (and when the next match lies past the year 5000), and
//! [`Schedule::last_at_or_before`] answers `None` before year 2; neither
//! panics, whatever the instant. Cron schedules have a
//! resolution of one second (a due instant is a whole second); intervals and
//! single instants are exact to the nanosecond.
//!
//! [`Schedule`]: crate::schedule::Schedule
//! [`Schedule::cron`]: crate::schedule::Schedule::cron
//! [`Schedule::celery`]: crate::schedule::Schedule::celery
//! [`Schedule::every`]: crate::schedule::Schedule::every
//! [`Schedule::once`]: crate::schedule::Schedule::once
//! [`Schedule::anchored_at`]: crate::schedule::Schedule::anchored_at
//! [`Schedule::in_timezone`]: crate::schedule::Schedule::in_timezone
//! [`Schedule::in_tz`]: crate::schedule::Schedule::in_tz
//! [`Schedule::next_after`]: crate::schedule::Schedule::next_after
//! [`Schedule::last_at_or_before`]: crate::schedule::Schedule::last_at_or_before
//! [`Crontab`]: crate::schedule::Crontab
//! [`Crontab::from_string`]: crate::schedule::Crontab::from_string

mod celery_form;
mod cron;
mod error;
mod interval;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;

pub use celery_form::Crontab;
pub use error::ScheduleError;
use interval::Interval;

/// When an entry is due: a cron expression, a Celery crontab, an interval,
/// or a single instant (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    kind: Kind,
    /// The zone cron schedules are evaluated in; recorded but unused for
    /// intervals and single instants.
    zone: Tz,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// The standard form: the expression as given, and croner's reading.
    Cron {
        expression: String,
        cron: croner::Cron,
    },
    /// The Celery form: the crontab as given, and croner's reading of its
    /// translation.
    Celery {
        crontab: Crontab,
        cron: croner::Cron,
    },
    Every(Interval),
    Once(DateTime<Utc>),
}

impl Schedule {
    /// A standard (Vixie) cron expression: 5 fields `m h dom mon dow`, or 6
    /// with seconds first `s m h dom mon dow`; names (`jan`, `mon`), ranges,
    /// steps, lists, `@hourly` and the other aliases, croner's `L`, `#` and
    /// `W`. When both day of month and day of week are restricted, a day
    /// matching either is due (Vixie's OR); day of week 0 and 7 are both
    /// Sunday. Evaluated in UTC until [`in_timezone`](Self::in_timezone).
    ///
    /// A 7-field expression (with a year, as in Quartz, whose day-of-week
    /// numbering differs) is rejected.
    pub fn cron(expression: &str) -> Result<Schedule, ScheduleError> {
        let cron = cron::parse_standard(expression)?;
        Ok(Schedule::utc(Kind::Cron {
            expression: expression.trim().to_owned(),
            cron,
        }))
    }

    /// Celery's `crontab(...)`, with Celery's meaning: days ANDed, day of
    /// week 0-6 with Sunday = 0, wrapping ranges (see the [module
    /// docs](self#the-two-cron-forms)). Evaluated in UTC until
    /// [`in_timezone`](Self::in_timezone).
    pub fn celery(crontab: &Crontab) -> Result<Schedule, ScheduleError> {
        let expression = crontab.to_cron_expression()?;
        let cron = cron::parse_celery(&expression)?;
        Ok(Schedule::utc(Kind::Celery {
            crontab: crontab.clone(),
            cron,
        }))
    }

    /// Every `period`, on the grid `anchor + k × period` with the anchor at
    /// the Unix epoch (see [`anchored_at`](Self::anchored_at)): `every(1s)`
    /// is due on whole seconds, `every(5min)` at :00, :05, …. Real elapsed
    /// time: time zones do not apply.
    ///
    /// A period of zero ([`ScheduleError::ZeroInterval`]) or under a
    /// millisecond ([`ScheduleError::IntervalTooShort`]) is an error.
    pub fn every(period: Duration) -> Result<Schedule, ScheduleError> {
        Ok(Schedule::utc(Kind::Every(Interval::new(period)?)))
    }

    /// Moves an interval schedule's grid to go through `anchor`: it is then
    /// due at `anchor + k × period` for every integer `k` (before the anchor
    /// too). Other schedules have no grid and are returned unchanged.
    pub fn anchored_at(self, anchor: DateTime<Utc>) -> Schedule {
        match self.kind {
            Kind::Every(interval) => Schedule {
                kind: Kind::Every(interval.anchored_at(anchor)),
                ..self
            },
            _ => self,
        }
    }

    /// Due once, at `at`.
    pub fn once(at: DateTime<Utc>) -> Schedule {
        Schedule::utc(Kind::Once(at))
    }

    /// Evaluates a cron schedule in the IANA time zone named `zone`
    /// (`"Europe/Paris"`, `"America/New_York"`, `"UTC"`; case-sensitive).
    /// An unknown name is [`ScheduleError::UnknownTimeZone`], whatever the
    /// kind of schedule; intervals and single instants do not depend on the
    /// zone.
    pub fn in_timezone(self, zone: &str) -> Result<Schedule, ScheduleError> {
        let parsed = zone
            .parse::<Tz>()
            .map_err(|_| ScheduleError::UnknownTimeZone(zone.to_owned()))?;
        Ok(self.in_tz(parsed))
    }

    /// Evaluates a cron schedule in `zone` (see
    /// [`in_timezone`](Self::in_timezone)).
    pub fn in_tz(self, zone: Tz) -> Schedule {
        Schedule { zone, ..self }
    }

    /// The zone cron schedules are evaluated in (UTC unless set).
    pub fn time_zone(&self) -> Tz {
        self.zone
    }

    /// The first due instant strictly after `after`; `None` when there is
    /// none (a single instant at or before `after`, a cron schedule that
    /// never matches again, an instant beyond what can be represented).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron { cron, .. } | Kind::Celery { cron, .. } => {
                cron::next_after(cron, self.zone, after)
            }
            Kind::Every(interval) => interval.next_after(after),
            Kind::Once(when) => (*when > after).then_some(*when),
        }
    }

    /// The last due instant at or before `at` (inclusive: `at` itself when
    /// it is due); `None` when there is none (a single instant after `at`, a
    /// cron schedule that never matched before). With
    /// [`next_after`](Self::next_after) this finds runs missed while the
    /// scheduler was down: a run was missed when
    /// `last_at_or_before(now) > last_run`.
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron { cron, .. } | Kind::Celery { cron, .. } => {
                cron::last_at_or_before(cron, self.zone, at)
            }
            Kind::Every(interval) => interval.last_at_or_before(at),
            Kind::Once(when) => (*when <= at).then_some(*when),
        }
    }

    fn utc(kind: Kind) -> Schedule {
        Schedule {
            kind,
            zone: Tz::UTC,
        }
    }
}

impl fmt::Display for Schedule {
    /// `cron '0 3 * * *' (Europe/Paris)`,
    /// `celery crontab(minute='0', hour='3') (UTC)`, `every 5s`,
    /// `once at 2026-12-24T18:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron { expression, .. } => write!(f, "cron '{expression}' ({})", self.zone),
            Kind::Celery { crontab, .. } => write!(f, "celery {crontab} ({})", self.zone),
            Kind::Every(interval) => write!(f, "{interval}"),
            Kind::Once(when) => write!(
                f,
                "once at {}",
                when.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            ),
        }
    }
}

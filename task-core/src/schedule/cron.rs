//! The croner side: building croner parsers for the two forms, explaining
//! croner's errors, and searching for occurrences in a time zone.
//!
//! Every cron search goes through croner; this file only converts between
//! UTC and the schedule's zone, keeps croner inside the years it supports,
//! and checks the answer lies on the asked side of the instant.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::ScheduleError;

/// Fields of a 5-field expression, in order.
const FIVE_FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];

/// Fields of a 6-field expression, in order.
const SIX_FIELDS: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// What the standard form expects, for error messages.
const EXPECTED_FIELDS: &str = "expected 5 fields 'minute hour day-of-month month day-of-week' \
     or 6 with seconds first 'second minute hour day-of-month month day-of-week'";

/// The standard form: croner's defaults (Vixie's day OR), seconds optional
/// in front, no year field (a 7-field expression is usually Quartz, whose
/// day-of-week numbering differs: better rejected than misread).
fn standard_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// The parser for translated Celery crontabs: five fields, days ANDed.
fn celery_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .dom_and_dow(true)
        .build()
}

/// Parses a standard-form expression.
pub(super) fn parse_standard(expression: &str) -> Result<Cron, ScheduleError> {
    standard_parser()
        .parse(expression)
        .map_err(|error| ScheduleError::InvalidCron {
            expression: expression.to_owned(),
            reason: explain(expression, &error),
        })
}

/// Parses the croner text a Celery crontab was translated to.
pub(super) fn parse_celery(expression: &str) -> Result<Cron, ScheduleError> {
    celery_parser()
        .parse(expression)
        .map_err(|error| ScheduleError::InvalidCron {
            expression: expression.to_owned(),
            reason: format!(
                "croner rejected this translation of a Celery crontab: {}",
                sentence(&error)
            ),
        })
}

/// A human reason for croner's `error` about `expression`.
///
/// croner's messages do not say which field is wrong. When the expression
/// has a valid number of fields, each field is checked alone (all the others
/// `*`), by croner again, to name the first one croner rejects.
fn explain(expression: &str, error: &CronError) -> String {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    match error {
        CronError::EmptyPattern => format!("the expression is empty; {EXPECTED_FIELDS}"),
        CronError::InvalidPattern(_) if expression.trim_start().starts_with('@') => format!(
            "unknown alias '{}'; the aliases are @yearly, @annually, @monthly, @weekly, \
             @daily and @hourly",
            expression.trim()
        ),
        CronError::InvalidPattern(_) => {
            format!("{EXPECTED_FIELDS}, found {}", fields.len())
        }
        _ => match faulty_field(&fields) {
            Some((name, value, field_error)) => format!(
                "{name} field '{value}': {}; {name} takes {}",
                sentence(&field_error),
                allowed_values(name)
            ),
            None => sentence(error),
        },
    }
}

/// The first field croner rejects on its own: its name, its text and
/// croner's error.
fn faulty_field<'a>(fields: &[&'a str]) -> Option<(&'static str, &'a str, CronError)> {
    let names: &[&'static str] = match fields.len() {
        5 => &FIVE_FIELDS,
        6 => &SIX_FIELDS,
        _ => return None,
    };
    let parser = standard_parser();
    names
        .iter()
        .zip(fields)
        .enumerate()
        .find_map(|(index, (name, value))| {
            let mut probe = vec!["*"; fields.len()];
            probe[index] = value;
            parser
                .parse(&probe.join(" "))
                .err()
                .map(|error| (*name, *value, error))
        })
}

/// What a field of the standard form takes.
fn allowed_values(field: &str) -> &'static str {
    match field {
        "second" | "minute" => "0-59",
        "hour" => "0-23",
        "day-of-month" => "1-31, L (last day), W (nearest weekday, as in 15W) or LW",
        "month" => "1-12 or jan-dec",
        "day-of-week" => {
            "0-7 (0 and 7 are Sunday) or sun-sat, with L (last, as in 5L) and # (nth, as in 1#2)"
        }
        _ => "another value",
    }
}

/// croner's error as a lower-case clause without a final period.
fn sentence(error: &CronError) -> String {
    let text = match error {
        CronError::ComponentError(message) | CronError::InvalidPattern(message) => message.clone(),
        CronError::IllegalCharacters(_) => "it contains a character not allowed there".to_owned(),
        CronError::EmptyPattern => "it is empty".to_owned(),
        other => other.to_string(),
    };
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The earliest instant croner is asked about: a day clear of croner's
/// lowest year, so that no time zone offset takes the wall clock below it.
fn search_start() -> Option<DateTime<Utc>> {
    Some(
        NaiveDate::from_ymd_opt(croner::YEAR_LOWER_LIMIT + 1, 1, 1)?
            .and_hms_opt(0, 0, 0)?
            .and_utc(),
    )
}

/// The latest instant croner is asked about: the end of the year before
/// croner's highest, for the same reason.
fn search_end() -> Option<DateTime<Utc>> {
    Some(
        NaiveDate::from_ymd_opt(croner::YEAR_UPPER_LIMIT - 1, 12, 31)?
            .and_hms_opt(23, 59, 59)?
            .and_utc(),
    )
}

/// How many times a search is resumed when croner answers on the wrong side
/// of the asked instant (never seen; a guard for the API's promise).
const RETRIES: usize = 3;

/// The first occurrence strictly after `after`, evaluated in `zone`.
pub(super) fn next_after(cron: &Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if after >= search_end()? {
        return None;
    }
    let start = search_start()?;
    let (mut from, mut inclusive) = if after < start {
        (start, true)
    } else {
        (after, false)
    };
    for _ in 0..RETRIES {
        let found = cron
            .find_next_occurrence(&from.with_timezone(&zone), inclusive)
            .ok()?
            .with_timezone(&Utc);
        if found > after {
            return Some(found);
        }
        (from, inclusive) = (found, false);
    }
    None
}

/// The last occurrence at or before `at`, evaluated in `zone`.
pub(super) fn last_at_or_before(cron: &Cron, zone: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if at < search_start()? {
        return None;
    }
    let (mut from, mut inclusive) = (at.min(search_end()?), true);
    for _ in 0..RETRIES {
        let found = cron
            .find_previous_occurrence(&from.with_timezone(&zone), inclusive)
            .ok()?
            .with_timezone(&Utc);
        if found <= at {
            return Some(found);
        }
        (from, inclusive) = (found, false);
    }
    None
}

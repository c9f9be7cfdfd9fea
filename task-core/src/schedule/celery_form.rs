//! [`Crontab`]: Celery's `crontab(...)` fields, and their translation into a
//! croner expression.
//!
//! The translation is the only cron text this crate handles itself (see the
//! [module docs](super#the-celery-form-rewrite)): each field is checked
//! against what Celery's `crontab_parser` accepts, names become numbers,
//! and a wrapping range (`22-2`) becomes two ranges. Everything else
//! (expanding `*`, steps and ranges, matching, searching) is croner's.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::ScheduleError;

/// Celery's crontab fields, each a string as Celery's `crontab(...)` takes
/// it; `"*"` (every value) by default.
///
/// ```
/// use task_core::schedule::{Crontab, Schedule};
///
/// // Celery: crontab(minute=0, hour=9, day_of_week='mon', day_of_month='1-7')
/// let first_monday = Crontab::new()
///     .minute("0")
///     .hour("9")
///     .day_of_week("mon")
///     .day_of_month("1-7");
/// let schedule = Schedule::celery(&first_monday)?;
/// # Ok::<(), task_core::schedule::ScheduleError>(())
/// ```
///
/// The syntax is Celery's: `*`, `n`, `a-b` (wrapping when `b < a`: hour
/// `22-2` is 22, 23, 0, 1, 2), `*/s`, `a-b/s` and comma lists of these;
/// `day_of_week` takes 0-6 with Sunday = 0, and names (`sun`, `monday`);
/// `month_of_year` takes 1-12 and names (`jan`, `february`). See the
/// [module docs](super) for how it differs from the standard form.
///
/// With serde, a missing field is `"*"`, a field may also be written as an
/// integer or a list (`minute = 0`, `hour = [8, 12]`, as Celery takes them),
/// and an unknown field (a misspelt `day_of_weak`) is an error rather than
/// silently every day. It serializes as strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Crontab {
    /// Minutes, 0-59.
    #[serde(deserialize_with = "field")]
    pub minute: String,
    /// Hours, 0-23.
    #[serde(deserialize_with = "field")]
    pub hour: String,
    /// Days of the week, 0-6 with Sunday = 0, or names `sun`-`sat`.
    #[serde(deserialize_with = "field")]
    pub day_of_week: String,
    /// Days of the month, 1-31.
    #[serde(deserialize_with = "field")]
    pub day_of_month: String,
    /// Months, 1-12, or names `jan`-`dec`.
    #[serde(deserialize_with = "field")]
    pub month_of_year: String,
}

impl Default for Crontab {
    /// Every field `"*"`: every minute.
    fn default() -> Self {
        Crontab {
            minute: "*".to_owned(),
            hour: "*".to_owned(),
            day_of_week: "*".to_owned(),
            day_of_month: "*".to_owned(),
            month_of_year: "*".to_owned(),
        }
    }
}

impl Crontab {
    /// Every field `"*"` (every minute), like Celery's `crontab()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the minute field (0-59).
    pub fn minute(mut self, value: impl Into<String>) -> Self {
        self.minute = value.into();
        self
    }

    /// Sets the hour field (0-23).
    pub fn hour(mut self, value: impl Into<String>) -> Self {
        self.hour = value.into();
        self
    }

    /// Sets the day-of-week field (0-6, Sunday = 0, or `sun`-`sat`).
    pub fn day_of_week(mut self, value: impl Into<String>) -> Self {
        self.day_of_week = value.into();
        self
    }

    /// Sets the day-of-month field (1-31).
    pub fn day_of_month(mut self, value: impl Into<String>) -> Self {
        self.day_of_month = value.into();
        self
    }

    /// Sets the month field (1-12 or `jan`-`dec`).
    pub fn month_of_year(mut self, value: impl Into<String>) -> Self {
        self.month_of_year = value.into();
        self
    }

    /// Celery's `crontab.from_string("m h dom mon dow")`: five fields
    /// separated by whitespace, in cron's order `minute hour day_of_month
    /// month_of_year day_of_week` (not the order of `crontab(...)`'s
    /// arguments). The fields are checked as [`Schedule::celery`] checks them.
    ///
    /// [`Schedule::celery`]: super::Schedule::celery
    pub fn from_string(s: &str) -> Result<Crontab, ScheduleError> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [minute, hour, day_of_month, month_of_year, day_of_week] = fields[..] else {
            return Err(ScheduleError::InvalidCron {
                expression: s.to_owned(),
                reason: format!(
                    "Celery's crontab.from_string takes 5 fields 'minute hour day_of_month \
                     month_of_year day_of_week', found {}",
                    fields.len()
                ),
            });
        };
        let crontab = Crontab {
            minute: minute.to_owned(),
            hour: hour.to_owned(),
            day_of_week: day_of_week.to_owned(),
            day_of_month: day_of_month.to_owned(),
            month_of_year: month_of_year.to_owned(),
        };
        crontab.to_cron_expression()?;
        Ok(crontab)
    }

    /// The croner expression `m h dom mon dow` with the same meaning (once
    /// parsed with the day fields ANDed), or the first invalid field.
    pub(super) fn to_cron_expression(&self) -> Result<String, ScheduleError> {
        let minute = translate(&MINUTE, &self.minute)?;
        let hour = translate(&HOUR, &self.hour)?;
        let day_of_month = translate(&DAY_OF_MONTH, &self.day_of_month)?;
        let month_of_year = translate(&MONTH_OF_YEAR, &self.month_of_year)?;
        let day_of_week = translate(&DAY_OF_WEEK, &self.day_of_week)?;
        Ok(format!(
            "{minute} {hour} {day_of_month} {month_of_year} {day_of_week}"
        ))
    }
}

impl fmt::Display for Crontab {
    /// Celery's call, with the fields that are not `*`:
    /// `crontab(minute='0', hour='3')`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("crontab(")?;
        let fields = [
            ("minute", &self.minute),
            ("hour", &self.hour),
            ("day_of_week", &self.day_of_week),
            ("day_of_month", &self.day_of_month),
            ("month_of_year", &self.month_of_year),
        ];
        let mut first = true;
        for (name, value) in fields {
            if value == "*" {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            write!(f, "{name}='{value}'")?;
            first = false;
        }
        f.write_str(")")
    }
}

/// One Celery field: its name, its range and the names it takes.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Full English names of `min`, `min + 1`, ...; matched on any prefix of
    /// at least three letters, case-insensitively.
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};

const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};

const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day_of_week",
    min: 0,
    max: 6,
    names: &[
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ],
};

const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day_of_month",
    min: 1,
    max: 31,
    names: &[],
};

const MONTH_OF_YEAR: FieldSpec = FieldSpec {
    name: "month_of_year",
    min: 1,
    max: 12,
    names: &[
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ],
};

/// Checks one field and rewrites it for croner.
fn translate(spec: &FieldSpec, value: &str) -> Result<String, ScheduleError> {
    let fail = |reason: String| ScheduleError::CeleryField {
        field: spec.name,
        value: value.to_owned(),
        reason,
    };
    if value.trim().is_empty() {
        return Err(fail(
            "the field is empty; use '*' for every value".to_owned(),
        ));
    }
    let items = value
        .split(',')
        .map(|item| translate_item(spec, item.trim()).map_err(&fail))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(items.join(","))
}

/// Checks one item of a comma list and rewrites it for croner, or says
/// what is wrong with it.
fn translate_item(spec: &FieldSpec, item: &str) -> Result<String, String> {
    if item.is_empty() {
        return Err("an item of the comma-separated list is empty".to_owned());
    }
    let (base, step) = match item.split_once('/') {
        None => (item, None),
        Some((base, step)) => (base, Some(parse_step(spec, item, step)?)),
    };
    if base == "*" {
        return Ok(match step {
            None => "*".to_owned(),
            Some(step) => format!("*/{step}"),
        });
    }
    match base.split_once('-') {
        Some((from, to)) if !from.is_empty() => {
            let from = value_of(spec, from)?;
            let to = value_of(spec, to)?;
            Ok(range(spec, from, to, step))
        }
        _ => {
            let number = value_of(spec, base)?;
            match step {
                None => Ok(number.to_string()),
                Some(step) => Err(format!(
                    "'{item}': a step needs '*' or a range before it ('*/{step}', \
                     '{number}-{}/{step}'); Celery does not take '{number}/{step}'",
                    spec.max
                )),
            }
        }
    }
}

/// A step (`/s`), clamped to the width of the field: a larger step picks
/// the same single value, and croner takes steps up to `u16::MAX` only.
fn parse_step(spec: &FieldSpec, item: &str, step: &str) -> Result<u32, String> {
    if step.is_empty() {
        return Err(format!("'{item}': '/' needs a step after it, as in '*/15'"));
    }
    if !step.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "'{item}': the step '{step}' is not a positive whole number"
        ));
    }
    let width = spec.max - spec.min + 1;
    // All digits, so the only failure is a number too large for u32.
    let step = step.parse::<u32>().unwrap_or(u32::MAX);
    if step == 0 {
        return Err(format!("'{item}': the step cannot be zero"));
    }
    Ok(step.min(width))
}

/// The croner text for the range `from-to` with an optional step. A range
/// with `to < from` wraps past the field's end as in Celery, which steps
/// through the concatenated list: `21-2/2` is 21, 23, 1 (from the list
/// 21, 22, 23, 0, 1, 2), so the second part starts where the step lands.
fn range(spec: &FieldSpec, from: u32, to: u32, step: Option<u32>) -> String {
    // croner takes `a-b/s` but not `a/s`, so a one-value range keeps its
    // dash when it has a step.
    let part = |from: u32, to: u32| match step {
        Some(step) => format!("{from}-{to}/{step}"),
        None if from == to => from.to_string(),
        None => format!("{from}-{to}"),
    };
    if from <= to {
        return part(from, to);
    }
    let head = part(from, spec.max);
    let head_len = spec.max - from + 1;
    let step = step.unwrap_or(1);
    let tail_start = spec.min + (step - head_len % step) % step;
    if tail_start > to {
        head
    } else {
        format!("{head},{}", part(tail_start, to))
    }
}

/// The number a value stands for: digits, or (in the fields with names) a
/// name; checked against the field's range.
fn value_of(spec: &FieldSpec, text: &str) -> Result<u32, String> {
    let number = if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        // All digits, so the only failure is a number too large for u32.
        text.parse::<u32>().unwrap_or(u32::MAX)
    } else if let Some(number) = name_value(spec, text) {
        number
    } else {
        return Err(not_a_value(spec, text));
    };
    if spec.name == DAY_OF_WEEK.name && number == 7 {
        return Err(
            "7 is not a day of the week in Celery's crontab, which numbers them 0-6 \
             with Sunday = 0 (use 0 or 'sun' for Sunday)"
                .to_owned(),
        );
    }
    if number < spec.min || number > spec.max {
        return Err(format!(
            "{text} is out of range: {} takes {}-{}",
            spec.name, spec.min, spec.max
        ));
    }
    Ok(number)
}

/// The value of a day or month name: its full English name or a prefix of
/// it of at least three letters (`mon`, `tues`, `september`).
fn name_value(spec: &FieldSpec, text: &str) -> Option<u32> {
    if text.len() < 3 {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let index = spec
        .names
        .iter()
        .position(|name| name.starts_with(&lower))?;
    u32::try_from(index).ok().map(|index| spec.min + index)
}

/// Why `text` is not a value of the field.
fn not_a_value(spec: &FieldSpec, text: &str) -> String {
    if text.is_empty() {
        return "a range is missing a bound".to_owned();
    }
    if text.starts_with('-') {
        return "negative numbers are not supported".to_owned();
    }
    if is_croner_syntax(text) {
        return format!(
            "'{text}' is croner syntax (L, W, #, ?, +, @aliases) that Celery's crontab does \
             not accept; use the standard cron form (Schedule::cron) for it"
        );
    }
    let names = match spec.names.first().zip(spec.names.last()) {
        Some((first, last)) => format!(" or a name ({}-{})", &first[..3], &last[..3]),
        None => String::new(),
    };
    format!(
        "'{text}' is not a number{names}; {} takes {}-{}",
        spec.name, spec.min, spec.max
    )
}

/// Whether `text` looks like croner's extensions: `@aliases`, `+` (days
/// ANDed), `?`, `#` (nth weekday), or `L`, `W`, `LW` alone or after a
/// number (`L`, `15W`, `5L`).
fn is_croner_syntax(text: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    let before_suffix = upper
        .strip_suffix("LW")
        .or_else(|| upper.strip_suffix('L'))
        .or_else(|| upper.strip_suffix('W'));
    upper.starts_with(['@', '+'])
        || upper.contains(['#', '?'])
        || before_suffix.is_some_and(|number| number.bytes().all(|byte| byte.is_ascii_digit()))
}

/// Deserializes a field given as a string, an integer, or a list of them
/// (joined with commas), as Celery's `crontab(...)` takes it.
fn field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(FieldVisitor { in_list: false })
}

struct FieldVisitor {
    /// Inside a list, where lists are not allowed again.
    in_list: bool,
}

impl<'de> serde::de::Visitor<'de> for FieldVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.in_list {
            f.write_str("a string or an integer")
        } else {
            f.write_str(
                "a Celery crontab field: a string such as '*/15' or '1-5', an integer, \
                 or a list of them",
            )
        }
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<String, E> {
        Ok(value.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<String, E> {
        Ok(value)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<String, E> {
        // A negative value is kept, for the field check to report.
        Ok(value.to_string())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        if self.in_list {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Seq,
                &self,
            ));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<ListItem>()? {
            items.push(item.0);
        }
        Ok(items.join(","))
    }
}

/// An item of a field given as a list.
struct ListItem(String);

impl<'de> Deserialize<'de> for ListItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(FieldVisitor { in_list: true })
            .map(ListItem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(spec: &FieldSpec, value: &str) -> String {
        translate(spec, value)
            .unwrap_or_else(|error| panic!("{}={value:?} should be valid: {error}", spec.name))
    }

    fn reason(spec: &FieldSpec, value: &str) -> String {
        match translate(spec, value) {
            Ok(text) => panic!("{}={value:?} should be invalid, gave {text:?}", spec.name),
            Err(ScheduleError::CeleryField {
                field,
                value: given,
                reason,
            }) => {
                assert_eq!(field, spec.name);
                assert_eq!(given, value);
                reason
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn plain_fields_pass_through() {
        assert_eq!(rewrite(&MINUTE, "*"), "*");
        assert_eq!(rewrite(&MINUTE, "0"), "0");
        assert_eq!(rewrite(&MINUTE, "*/15"), "*/15");
        assert_eq!(rewrite(&MINUTE, "1,13,30-45,50-59/2"), "1,13,30-45,50-59/2");
        assert_eq!(rewrite(&HOUR, "0,8-17/2"), "0,8-17/2");
        assert_eq!(rewrite(&DAY_OF_MONTH, "2-30/2"), "2-30/2");
        // Leading zeros and blanks around list items, as Python's int() takes them.
        assert_eq!(rewrite(&MINUTE, "05, 10"), "5,10");
    }

    #[test]
    fn names_become_numbers() {
        assert_eq!(rewrite(&DAY_OF_WEEK, "mon-fri"), "1-5");
        assert_eq!(rewrite(&DAY_OF_WEEK, "sun"), "0");
        assert_eq!(rewrite(&DAY_OF_WEEK, "Sunday,SAT"), "0,6");
        assert_eq!(rewrite(&DAY_OF_WEEK, "tues,thurs"), "2,4");
        assert_eq!(rewrite(&MONTH_OF_YEAR, "jan,Mar-may"), "1,3-5");
        assert_eq!(rewrite(&MONTH_OF_YEAR, "december"), "12");
        // Names belong to their own field only.
        assert!(reason(&MINUTE, "mon").contains("not a number"));
        assert!(reason(&DAY_OF_WEEK, "jan").contains("not a number or a name (sun-sat)"));
        assert!(reason(&MONTH_OF_YEAR, "mon").contains("(jan-dec)"));
        assert!(reason(&DAY_OF_WEEK, "mondya").contains("not a number"));
        assert!(reason(&MINUTE, "wed").contains("not a number"));
    }

    #[test]
    fn wrapping_ranges_become_two_ranges() {
        assert_eq!(rewrite(&HOUR, "22-2"), "22-23,0-2");
        assert_eq!(rewrite(&DAY_OF_WEEK, "fri-mon"), "5-6,0-1");
        assert_eq!(rewrite(&DAY_OF_WEEK, "sat-sun"), "6,0");
        assert_eq!(rewrite(&HOUR, "5-5"), "5");
        assert_eq!(rewrite(&MONTH_OF_YEAR, "nov-feb"), "11-12,1-2");
        assert_eq!(rewrite(&DAY_OF_MONTH, "30-2"), "30-31,1-2");
        // Celery steps through the concatenated list.
        // [22, 23, 0, 1, 2][::2] = 22, 0, 2
        assert_eq!(rewrite(&HOUR, "22-2/2"), "22-23/2,0-2/2");
        // [21, 22, 23, 0, 1, 2][::2] = 21, 23, 1
        assert_eq!(rewrite(&HOUR, "21-2/2"), "21-23/2,1-2/2");
        // [50..59, 0..10][::7] = 50, 57, 4
        assert_eq!(rewrite(&MINUTE, "50-10/7"), "50-59/7,4-10/7");
        // [23, 0][::5] = 23: nothing from the second part.
        assert_eq!(rewrite(&HOUR, "23-0/5"), "23-23/5");
        assert_eq!(rewrite(&HOUR, "23-0"), "23,0");
    }

    #[test]
    fn steps_are_clamped_to_the_field_width() {
        assert_eq!(rewrite(&MINUTE, "*/100"), "*/60");
        assert_eq!(rewrite(&HOUR, "1-5/99999999999"), "1-5/24");
    }

    #[test]
    fn invalid_values_are_reported_clearly() {
        let seven = reason(&DAY_OF_WEEK, "7");
        assert!(seven.contains("7 is not a day of the week"), "{seven}");
        assert!(seven.contains("Sunday = 0"), "{seven}");
        assert!(reason(&DAY_OF_WEEK, "5-7").contains("7 is not a day of the week"));
        assert_eq!(
            reason(&MINUTE, "60"),
            "60 is out of range: minute takes 0-59"
        );
        assert_eq!(
            reason(&DAY_OF_MONTH, "0"),
            "0 is out of range: day_of_month takes 1-31"
        );
        assert_eq!(
            reason(&HOUR, "99999999999999"),
            "99999999999999 is out of range: hour takes 0-23"
        );
        assert!(reason(&MINUTE, "").contains("empty"));
        assert!(reason(&MINUTE, "1,,2").contains("empty"));
        assert!(reason(&MINUTE, "-5").contains("negative"));
        assert!(reason(&MINUTE, "*/").contains("needs a step"));
        assert!(reason(&MINUTE, "*/0").contains("cannot be zero"));
        assert!(reason(&MINUTE, "*/x").contains("not a positive whole number"));
        assert!(reason(&MINUTE, "5/15").contains("a step needs '*' or a range"));
        assert!(reason(&MINUTE, "1-").contains("missing a bound"));
    }

    #[test]
    fn croner_only_syntax_is_rejected() {
        for (spec, value) in [
            (&DAY_OF_MONTH, "L"),
            (&DAY_OF_MONTH, "15W"),
            (&DAY_OF_WEEK, "5L"),
            (&DAY_OF_WEEK, "1#2"),
            (&DAY_OF_WEEK, "?"),
            (&DAY_OF_WEEK, "+1"),
            (&MINUTE, "@hourly"),
            (&DAY_OF_MONTH, "LW"),
        ] {
            let reason = reason(spec, value);
            assert!(reason.contains("croner syntax"), "{value}: {reason}");
            assert!(reason.contains("Schedule::cron"), "{value}: {reason}");
        }
    }

    #[test]
    fn from_string_uses_cron_order() {
        let crontab = Crontab::from_string("0 9 1-7 * mon").expect("valid");
        assert_eq!(
            crontab,
            Crontab::new()
                .minute("0")
                .hour("9")
                .day_of_month("1-7")
                .day_of_week("mon")
        );
        assert!(matches!(
            Crontab::from_string("0 9 * *"),
            Err(ScheduleError::InvalidCron { reason, .. }) if reason.contains("found 4")
        ));
        assert!(matches!(
            Crontab::from_string("0 9 * * 7"),
            Err(ScheduleError::CeleryField {
                field: "day_of_week",
                ..
            })
        ));
    }

    #[test]
    fn display_shows_the_fields_that_are_set() {
        assert_eq!(Crontab::new().to_string(), "crontab()");
        assert_eq!(
            Crontab::new().minute("0").hour("3").to_string(),
            "crontab(minute='0', hour='3')"
        );
        assert_eq!(
            Crontab::new().day_of_week("mon-fri").to_string(),
            "crontab(day_of_week='mon-fri')"
        );
    }

    #[test]
    fn serde_defaults_each_field_and_takes_integers_and_lists() {
        let crontab: Crontab =
            serde_json::from_str(r#"{"minute": 0, "hour": [8, "12-14"]}"#).expect("valid");
        assert_eq!(crontab, Crontab::new().minute("0").hour("8,12-14"));
        let empty: Crontab = serde_json::from_str("{}").expect("valid");
        assert_eq!(empty, Crontab::new());
        let error = serde_json::from_str::<Crontab>(r#"{"day_of_weak": "mon"}"#)
            .expect_err("unknown field");
        assert!(error.to_string().contains("day_of_weak"), "{error}");
        let error =
            serde_json::from_str::<Crontab>(r#"{"minute": [[1]]}"#).expect_err("nested list");
        assert!(
            error.to_string().contains("a string or an integer"),
            "{error}"
        );
        let json = serde_json::to_string(&Crontab::new().minute("0")).expect("serializes");
        assert_eq!(
            json,
            r#"{"minute":"0","hour":"*","day_of_week":"*","day_of_month":"*","month_of_year":"*"}"#
        );
    }
}

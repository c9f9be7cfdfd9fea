//! Celery protocol v2 on the wire: task messages ([`task_message`]), result
//! messages of the `rpc://` backend ([`result_message`]), the Python-style
//! `repr` Celery puts in `argsrepr`/`kwargsrepr` ([`repr`]), canvas in a
//! message's `embed` ([`canvas`]), and this framework's own join of chords
//! on RabbitMQ alone ([`chord_join`]).

pub mod canvas;
pub mod chord_join;
pub mod repr;
pub mod result_message;
pub mod task_message;

use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};

/// The `content_type` of every message this framework writes and accepts.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The `content_encoding` of every message this framework writes.
pub const CONTENT_ENCODING_UTF8: &str = "utf-8";

/// `<pid>@<hostname>`, as Celery names a process.
pub fn process_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("{}@{}", std::process::id(), hostname()))
}

/// This worker's node name as Celery writes it (`celery@<host>`), e.g. in
/// the `worker` field of extended results.
pub fn worker_nodename() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| format!("celery@{}", hostname()))
}

/// This machine's host name.
pub fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// A UTC time as Celery writes it: ISO-8601 with microseconds and `+00:00`.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Reads an ISO-8601 time. A time without offset is taken as UTC (Celery
/// would take the worker's local zone: always send an offset).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_with_offset() {
        let text = "2026-11-22T15:00:00.123456+00:00";
        let time = parse_time(text).unwrap();
        assert_eq!(format_time(time), text);
        assert_eq!(
            parse_time("2026-11-22T16:00:00+01:00"),
            parse_time("2026-11-22T15:00:00Z")
        );
        assert_eq!(
            parse_time("2026-11-22T15:00:00"),
            parse_time("2026-11-22T15:00:00Z")
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}

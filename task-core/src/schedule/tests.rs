//! Tests of [`Schedule`] as a whole: every case is a pure function of the
//! instants passed in.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::{Crontab, Schedule, ScheduleError};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("test instant")
}

/// A wall clock time that exists once in `zone`, as UTC.
fn local(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    zone.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .expect("test time exists once")
        .with_timezone(&Utc)
}

fn cron(expression: &str) -> Schedule {
    Schedule::cron(expression)
        .unwrap_or_else(|error| panic!("{expression:?} should be valid: {error}"))
}

fn celery(crontab: Crontab) -> Schedule {
    Schedule::celery(&crontab).unwrap_or_else(|error| panic!("{crontab} should be valid: {error}"))
}

/// The first `count` due instants after `after`.
fn firsts(schedule: &Schedule, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    let mut runs = Vec::new();
    let mut cursor = after;
    while runs.len() < count {
        let Some(run) = schedule.next_after(cursor) else {
            break;
        };
        assert!(run > cursor, "{schedule}: {run} is not after {cursor}");
        runs.push(run);
        cursor = run;
    }
    runs
}

/// Every due instant in `[from, to)`, by iterating `next_after`.
fn between(schedule: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut runs = Vec::new();
    let mut cursor = from - chrono::Duration::nanoseconds(1);
    while let Some(run) = schedule.next_after(cursor).filter(|run| *run < to) {
        assert!(run > cursor, "{schedule}: {run} is not after {cursor}");
        runs.push(run);
        cursor = run;
    }
    runs
}

fn error_message(result: Result<Schedule, ScheduleError>) -> String {
    match result {
        Ok(schedule) => panic!("expected an error, got {schedule}"),
        Err(error) => error.to_string(),
    }
}

// ---- Calendar ----------------------------------------------------------

#[test]
fn the_31st_skips_months_without_one() {
    let runs = firsts(&cron("0 0 31 * *"), utc(2026, 1, 1, 0, 0, 0), 7);
    let months: Vec<_> = runs
        .iter()
        .map(|run| run.format("%Y-%m-%d").to_string())
        .collect();
    assert_eq!(
        months,
        [
            "2026-01-31",
            "2026-03-31",
            "2026-05-31",
            "2026-07-31",
            "2026-08-31",
            "2026-10-31",
            "2026-12-31"
        ]
    );
}

#[test]
fn february_29th_waits_for_a_leap_year() {
    let leap_day = cron("0 0 29 2 *");
    assert_eq!(
        leap_day.next_after(utc(2026, 1, 1, 0, 0, 0)),
        Some(utc(2028, 2, 29, 0, 0, 0))
    );
    assert_eq!(
        leap_day.next_after(utc(2028, 2, 29, 0, 0, 0)),
        Some(utc(2032, 2, 29, 0, 0, 0))
    );
    assert_eq!(
        leap_day.last_at_or_before(utc(2026, 6, 1, 0, 0, 0)),
        Some(utc(2024, 2, 29, 0, 0, 0))
    );
    // Celery form too.
    let celery_leap_day = celery(
        Crontab::new()
            .minute("0")
            .hour("0")
            .day_of_month("29")
            .month_of_year("2"),
    );
    assert_eq!(
        celery_leap_day.next_after(utc(2026, 1, 1, 0, 0, 0)),
        Some(utc(2028, 2, 29, 0, 0, 0))
    );
}

#[test]
fn last_day_of_the_month_with_l() {
    let runs = firsts(&cron("0 12 L * *"), utc(2026, 1, 15, 0, 0, 0), 4);
    assert_eq!(
        runs,
        [
            utc(2026, 1, 31, 12, 0, 0),
            utc(2026, 2, 28, 12, 0, 0),
            utc(2026, 3, 31, 12, 0, 0),
            utc(2026, 4, 30, 12, 0, 0)
        ]
    );
    assert_eq!(
        cron("0 0 L 2 *").next_after(utc(2027, 3, 1, 0, 0, 0)),
        Some(utc(2028, 2, 29, 0, 0, 0))
    );
}

#[test]
fn a_schedule_that_can_never_match_is_never_due() {
    let started = Instant::now();
    for schedule in [
        cron("0 0 30 2 *"),
        cron("0 0 31 4,6,9,11 *"),
        celery(
            Crontab::new()
                .minute("0")
                .hour("0")
                .day_of_month("31")
                .month_of_year("feb"),
        ),
    ] {
        assert_eq!(
            schedule.next_after(utc(2026, 1, 1, 0, 0, 0)),
            None,
            "{schedule}"
        );
        assert_eq!(
            schedule.last_at_or_before(utc(2026, 1, 1, 0, 0, 0)),
            None,
            "{schedule}"
        );
    }
    // croner gives up at year 5000; the search must not take long either.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

// ---- Field forms -------------------------------------------------------

#[test]
fn every_field_form_of_the_standard_form() {
    let day = utc(2026, 5, 4, 0, 0, 0); // a Monday
    let next_day = utc(2026, 5, 5, 0, 0, 0);
    let hours = |schedule: &Schedule| -> Vec<String> {
        between(schedule, day, next_day)
            .iter()
            .map(|run| run.format("%H:%M").to_string())
            .collect()
    };
    // List.
    assert_eq!(hours(&cron("0 8,12,18 * * *")), ["08:00", "12:00", "18:00"]);
    // Range.
    assert_eq!(hours(&cron("30 9-11 * * *")), ["09:30", "10:30", "11:30"]);
    // Step.
    assert_eq!(
        hours(&cron("*/20 */8 * * *")),
        ["00:00", "00:20", "00:40", "08:00", "08:20", "08:40", "16:00", "16:20", "16:40"]
    );
    // Range with a step.
    assert_eq!(hours(&cron("0 8-18/5 * * *")), ["08:00", "13:00", "18:00"]);
    // Wildcard.
    assert_eq!(between(&cron("* * * * *"), day, next_day).len(), 24 * 60);
    // Names, any case.
    let names = cron("0 6 * JAN,jul mon-wed");
    assert_eq!(
        firsts(&names, utc(2026, 6, 30, 0, 0, 0), 4),
        [
            utc(2026, 7, 1, 6, 0, 0), // Wednesday
            utc(2026, 7, 6, 6, 0, 0), // Monday
            utc(2026, 7, 7, 6, 0, 0),
            utc(2026, 7, 8, 6, 0, 0)
        ]
    );
    // Aliases.
    assert_eq!(
        cron("@hourly").next_after(utc(2026, 5, 4, 10, 20, 0)),
        Some(utc(2026, 5, 4, 11, 0, 0))
    );
    assert_eq!(
        cron("@weekly").next_after(day),
        Some(utc(2026, 5, 10, 0, 0, 0)) // Sunday
    );
    // croner's nth weekday: the second Tuesday.
    assert_eq!(
        cron("0 0 * * 2#2").next_after(day),
        Some(utc(2026, 5, 12, 0, 0, 0))
    );
}

#[test]
fn six_fields_put_seconds_first() {
    let every_15s = cron("*/15 * * * * *");
    assert_eq!(
        firsts(&every_15s, utc(2026, 5, 4, 10, 0, 7), 3),
        [
            utc(2026, 5, 4, 10, 0, 15),
            utc(2026, 5, 4, 10, 0, 30),
            utc(2026, 5, 4, 10, 0, 45)
        ]
    );
    let noon_and_a_half_minute = cron("30 0 12 * * *");
    assert_eq!(
        noon_and_a_half_minute.next_after(utc(2026, 5, 4, 12, 0, 30)),
        Some(utc(2026, 5, 5, 12, 0, 30))
    );
    // Five fields are due on the minute.
    assert_eq!(
        cron("0 12 * * *").next_after(utc(2026, 5, 4, 11, 59, 59)),
        Some(utc(2026, 5, 4, 12, 0, 0))
    );
    // A year field is not taken.
    let seven = error_message(Schedule::cron("0 0 12 * * * 2026"));
    assert!(seven.contains("expected 5 fields"), "{seven}");
    assert!(seven.contains("found 7"), "{seven}");
}

#[test]
fn celery_field_forms() {
    let day = utc(2026, 5, 4, 0, 0, 0);
    let next_day = utc(2026, 5, 5, 0, 0, 0);
    let hours = |schedule: &Schedule| -> Vec<String> {
        between(schedule, day, next_day)
            .iter()
            .map(|run| run.format("%H:%M").to_string())
            .collect()
    };
    assert_eq!(
        hours(&celery(Crontab::new().minute("0").hour("0,8-17/4"))),
        ["00:00", "08:00", "12:00", "16:00"]
    );
    assert_eq!(
        hours(&celery(Crontab::new().minute("*/20").hour("3"))),
        ["03:00", "03:20", "03:40"]
    );
    assert_eq!(
        between(&celery(Crontab::new()), day, next_day).len(),
        24 * 60
    );
    // A step wider than the field picks its first value, as in Celery.
    assert_eq!(
        between(&celery(Crontab::new().minute("*/100")), day, next_day).len(),
        24
    );
    // The day of month */3 counts from 1.
    let every_third_day = celery(Crontab::new().minute("0").hour("0").day_of_month("*/3"));
    let days: Vec<u32> = between(
        &every_third_day,
        utc(2026, 5, 1, 0, 0, 0),
        utc(2026, 6, 1, 0, 0, 0),
    )
    .iter()
    .map(chrono::Datelike::day)
    .collect();
    assert_eq!(days, [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31]);
    // from_string.
    let from_string = Crontab::from_string("15 6 * * sun").expect("valid");
    assert_eq!(
        celery(from_string).next_after(day),
        Some(utc(2026, 5, 10, 6, 15, 0))
    );
}

// ---- Standard and Celery forms ------------------------------------------

#[test]
fn day_fields_are_ored_in_the_standard_form_and_anded_in_celery() {
    let after = utc(2026, 6, 30, 12, 0, 0);
    // Standard: the 1st to the 7th, and every Monday.
    let vixie = cron("0 9 1-7 * 1");
    assert_eq!(
        firsts(&vixie, after, 10)
            .iter()
            .map(|run| run.format("%m-%d").to_string())
            .collect::<Vec<_>>(),
        [
            "07-01", "07-02", "07-03", "07-04", "07-05", "07-06", "07-07", "07-13", "07-20",
            "07-27"
        ]
    );
    // Celery: the first Monday of the month.
    let first_monday = celery(
        Crontab::new()
            .minute("0")
            .hour("9")
            .day_of_week("1")
            .day_of_month("1-7"),
    );
    assert_eq!(
        firsts(&first_monday, after, 3),
        [
            utc(2026, 7, 6, 9, 0, 0),
            utc(2026, 8, 3, 9, 0, 0),
            utc(2026, 9, 7, 9, 0, 0)
        ]
    );
    assert_eq!(
        first_monday.last_at_or_before(after),
        Some(utc(2026, 6, 1, 9, 0, 0))
    );
    // croner's '+' ANDs the days in the standard form too.
    assert_eq!(
        firsts(&cron("0 9 1-7 * +1"), after, 3),
        firsts(&first_monday, after, 3)
    );
    // With one day field left '*', both forms agree.
    let standard_mondays = cron("0 9 * * 1");
    let celery_mondays = celery(Crontab::new().minute("0").hour("9").day_of_week("mon"));
    assert_eq!(
        firsts(&standard_mondays, after, 8),
        firsts(&celery_mondays, after, 8)
    );
}

#[test]
fn day_of_week_7_is_sunday_in_the_standard_form_and_rejected_in_celery() {
    let after = utc(2026, 5, 4, 0, 0, 0);
    assert_eq!(
        firsts(&cron("0 0 * * 7"), after, 3),
        firsts(&cron("0 0 * * 0"), after, 3)
    );
    assert_eq!(
        cron("0 0 * * 7").next_after(after),
        Some(utc(2026, 5, 10, 0, 0, 0))
    );
    assert_eq!(
        error_message(Schedule::celery(&Crontab::new().day_of_week("7"))),
        "invalid Celery crontab field day_of_week='7': 7 is not a day of the week in Celery's \
         crontab, which numbers them 0-6 with Sunday = 0 (use 0 or 'sun' for Sunday)"
    );
    // Sunday is 0 in Celery.
    assert_eq!(
        celery(Crontab::new().minute("0").hour("0").day_of_week("0")).next_after(after),
        Some(utc(2026, 5, 10, 0, 0, 0))
    );
}

#[test]
fn wrapping_ranges_in_celery() {
    let day = utc(2026, 5, 4, 0, 0, 0);
    let night = celery(Crontab::new().minute("0").hour("22-2"));
    let hours: Vec<String> = between(&night, day, utc(2026, 5, 5, 0, 0, 0))
        .iter()
        .map(|run| run.format("%H").to_string())
        .collect();
    assert_eq!(hours, ["00", "01", "02", "22", "23"]);

    // Friday to Monday.
    let long_weekend = celery(Crontab::new().minute("0").hour("12").day_of_week("fri-mon"));
    let days: Vec<String> = firsts(&long_weekend, day, 5)
        .iter()
        .map(|run| run.format("%a %d").to_string())
        .collect();
    assert_eq!(days, ["Mon 04", "Fri 08", "Sat 09", "Sun 10", "Mon 11"]);

    // Celery's day_of_week '*/2': even day numbers, Sunday = 0.
    let even_days = celery(Crontab::new().minute("0").hour("0").day_of_week("*/2"));
    let days: Vec<String> = firsts(&even_days, day, 4)
        .iter()
        .map(|run| run.format("%a").to_string())
        .collect();
    assert_eq!(days, ["Tue", "Thu", "Sat", "Sun"]);

    // The standard form does not wrap.
    let message = error_message(Schedule::cron("0 22-2 * * *"));
    assert!(
        message.starts_with("invalid cron expression '0 22-2 * * *': hour field '22-2'"),
        "{message}"
    );
}

#[test]
fn celery_rejects_croner_only_syntax() {
    for crontab in [
        Crontab::new().day_of_month("L"),
        Crontab::new().day_of_month("15W"),
        Crontab::new().day_of_week("5L"),
        Crontab::new().day_of_week("1#2"),
        Crontab::new().day_of_week("?"),
        Crontab::new().minute("@hourly"),
    ] {
        let message = error_message(Schedule::celery(&crontab));
        assert!(message.contains("croner syntax"), "{message}");
    }
}

// ---- Daylight saving time ------------------------------------------------

#[test]
fn paris_spring_forward_runs_a_fixed_time_job_once_after_the_gap() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    let paris = chrono_tz::Europe::Paris;
    let schedule = cron("30 2 * * *").in_tz(paris);
    let day = between(
        &schedule,
        local(paris, 2026, 3, 29, 0, 0),
        local(paris, 2026, 3, 30, 0, 0),
    );
    assert_eq!(day, [utc(2026, 3, 29, 1, 0, 0)]); // 03:00 CEST
                                                  // The days around are ordinary.
    assert_eq!(
        firsts(&schedule, utc(2026, 3, 28, 0, 0, 0), 3),
        [
            utc(2026, 3, 28, 1, 30, 0), // 02:30 CET
            utc(2026, 3, 29, 1, 0, 0),  // 03:00 CEST, just after the gap
            utc(2026, 3, 30, 0, 30, 0)  // 02:30 CEST
        ]
    );
    assert_eq!(
        schedule.last_at_or_before(utc(2026, 3, 29, 12, 0, 0)),
        Some(utc(2026, 3, 29, 1, 0, 0))
    );

    // A job that is not fixed-time skips the missing hour: 46 half hours.
    let half_hourly = cron("*/30 * * * *").in_tz(paris);
    let runs = between(
        &half_hourly,
        local(paris, 2026, 3, 29, 0, 0),
        local(paris, 2026, 3, 30, 0, 0),
    );
    assert_eq!(runs.len(), 46);
    assert!(runs
        .windows(2)
        .all(|pair| pair[1] - pair[0] == chrono::Duration::minutes(30)));
}

#[test]
fn paris_fall_back_runs_a_fixed_time_job_once_at_the_earlier_instant() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    let paris = chrono_tz::Europe::Paris;
    let schedule = cron("30 2 * * *")
        .in_timezone("Europe/Paris")
        .expect("zone");
    let day = between(
        &schedule,
        local(paris, 2026, 10, 25, 0, 0),
        local(paris, 2026, 10, 26, 0, 0),
    );
    assert_eq!(day, [utc(2026, 10, 25, 0, 30, 0)]); // 02:30 CEST
                                                    // Asked from between the two 02:30s, or from the later one, it is
                                                    // already done for the day.
    assert_eq!(
        schedule.next_after(utc(2026, 10, 25, 1, 0, 0)),
        Some(utc(2026, 10, 26, 1, 30, 0))
    );
    assert_eq!(
        schedule.next_after(utc(2026, 10, 25, 1, 30, 0)),
        Some(utc(2026, 10, 26, 1, 30, 0))
    );
    // Backwards, from after the later 02:30, the one run is the earlier.
    assert_eq!(
        schedule.last_at_or_before(utc(2026, 10, 25, 3, 0, 0)),
        Some(utc(2026, 10, 25, 0, 30, 0))
    );

    // A job that is not fixed-time runs in both repeated hours: 50 half hours.
    let half_hourly = cron("*/30 * * * *").in_tz(paris);
    let runs = between(
        &half_hourly,
        local(paris, 2026, 10, 25, 0, 0),
        local(paris, 2026, 10, 26, 0, 0),
    );
    assert_eq!(runs.len(), 50);
    assert!(runs
        .windows(2)
        .all(|pair| pair[1] - pair[0] == chrono::Duration::minutes(30)));
    let quarter_hours_at_2 = cron("*/15 2 * * *").in_tz(paris);
    let runs = between(
        &quarter_hours_at_2,
        local(paris, 2026, 10, 25, 0, 0),
        local(paris, 2026, 10, 26, 0, 0),
    );
    assert_eq!(runs.len(), 8);
    assert_eq!(runs[0], utc(2026, 10, 25, 0, 0, 0)); // 02:00 CEST
    assert_eq!(runs[4], utc(2026, 10, 25, 1, 0, 0)); // 02:00 CET
}

#[test]
fn new_york_both_transitions() {
    let new_york = chrono_tz::America::New_York;
    // 2026-03-08: 02:00 EST becomes 03:00 EDT.
    let half_past_two = cron("30 2 * * *").in_tz(new_york);
    assert_eq!(
        between(
            &half_past_two,
            local(new_york, 2026, 3, 8, 0, 0),
            local(new_york, 2026, 3, 9, 0, 0)
        ),
        [utc(2026, 3, 8, 7, 0, 0)] // 03:00 EDT
    );
    // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice.
    let half_past_one = cron("30 1 * * *")
        .in_timezone("America/New_York")
        .expect("zone");
    assert_eq!(
        between(
            &half_past_one,
            local(new_york, 2026, 11, 1, 0, 0),
            local(new_york, 2026, 11, 2, 0, 0)
        ),
        [utc(2026, 11, 1, 5, 30, 0)] // 01:30 EDT
    );
    // Celery form, same rules.
    let celery_half_past_one = celery(Crontab::new().minute("30").hour("1")).in_tz(new_york);
    assert_eq!(
        between(
            &celery_half_past_one,
            local(new_york, 2026, 11, 1, 0, 0),
            local(new_york, 2026, 11, 2, 0, 0)
        ),
        [utc(2026, 11, 1, 5, 30, 0)]
    );
    // An hourly job has 25 runs that day and 23 on the spring day.
    let hourly = cron("0 * * * *").in_tz(new_york);
    let count = |from, to| between(&hourly, from, to).len();
    assert_eq!(
        count(
            local(new_york, 2026, 11, 1, 0, 0),
            local(new_york, 2026, 11, 2, 0, 0)
        ),
        25
    );
    assert_eq!(
        count(
            local(new_york, 2026, 3, 8, 0, 0),
            local(new_york, 2026, 3, 9, 0, 0)
        ),
        23
    );
}

#[test]
fn time_zones_shift_cron_but_not_intervals_or_instants() {
    let after = utc(2026, 1, 15, 12, 0, 0);
    let tokyo = cron("0 9 * * *").in_timezone("Asia/Tokyo").expect("zone");
    assert_eq!(tokyo.next_after(after), Some(utc(2026, 1, 16, 0, 0, 0)));
    assert_eq!(tokyo.time_zone(), chrono_tz::Asia::Tokyo);
    assert_eq!(cron("0 9 * * *").time_zone(), chrono_tz::UTC);

    let every = Schedule::every(Duration::from_secs(3600)).expect("valid");
    let every_in_zone = every.clone().in_timezone("Asia/Kolkata").expect("zone");
    assert_eq!(every_in_zone.next_after(after), every.next_after(after));
    let once = Schedule::once(after);
    let once_in_zone = once.clone().in_timezone("Asia/Kolkata").expect("zone");
    assert_eq!(
        once_in_zone.last_at_or_before(after),
        once.last_at_or_before(after)
    );
}

// ---- Intervals and single instants -----------------------------------------

#[test]
fn intervals_run_on_a_shared_grid() {
    let every_5min = Schedule::every(Duration::from_secs(300)).expect("valid");
    assert_eq!(
        every_5min.next_after(utc(2026, 5, 4, 10, 2, 17)),
        Some(utc(2026, 5, 4, 10, 5, 0))
    );
    assert_eq!(
        every_5min.next_after(utc(2026, 5, 4, 10, 5, 0)),
        Some(utc(2026, 5, 4, 10, 10, 0))
    );
    assert_eq!(
        every_5min.last_at_or_before(utc(2026, 5, 4, 10, 5, 0)),
        Some(utc(2026, 5, 4, 10, 5, 0))
    );
    assert_eq!(
        every_5min.last_at_or_before(utc(2026, 5, 4, 10, 4, 59)),
        Some(utc(2026, 5, 4, 10, 0, 0))
    );
    let every_second = Schedule::every(Duration::from_secs(1)).expect("valid");
    let just_after = utc(2026, 5, 4, 10, 0, 0) + chrono::Duration::microseconds(1);
    assert_eq!(
        every_second.next_after(just_after),
        Some(utc(2026, 5, 4, 10, 0, 1))
    );

    let anchor = utc(2026, 5, 4, 10, 0, 3);
    let anchored = every_5min.anchored_at(anchor);
    assert_eq!(anchored.next_after(anchor), Some(utc(2026, 5, 4, 10, 5, 3)));
    assert_eq!(
        anchored.next_after(utc(2026, 5, 4, 9, 59, 0)),
        Some(utc(2026, 5, 4, 9, 55, 3) + chrono::Duration::minutes(5))
    );
    assert_eq!(anchored.last_at_or_before(anchor), Some(anchor));
    assert_eq!(
        anchored.to_string(),
        "every 5min (grid through 2026-05-04T10:00:03Z)"
    );

    // anchored_at leaves other schedules alone.
    let nightly = cron("0 3 * * *");
    assert_eq!(nightly.clone().anchored_at(anchor), nightly);
}

#[test]
fn once_is_due_at_its_instant_only() {
    let at = utc(2026, 12, 24, 18, 0, 0);
    let once = Schedule::once(at);
    assert_eq!(once.next_after(at - chrono::Duration::seconds(1)), Some(at));
    assert_eq!(once.next_after(at), None);
    assert_eq!(once.next_after(at + chrono::Duration::days(1)), None);
    assert_eq!(once.last_at_or_before(at), Some(at));
    assert_eq!(
        once.last_at_or_before(at + chrono::Duration::days(1)),
        Some(at)
    );
    assert_eq!(
        once.last_at_or_before(at - chrono::Duration::seconds(1)),
        None
    );
}

#[test]
fn cron_last_at_or_before_is_inclusive() {
    let nightly = cron("0 3 * * *");
    assert_eq!(
        nightly.last_at_or_before(utc(2026, 5, 4, 3, 0, 0)),
        Some(utc(2026, 5, 4, 3, 0, 0))
    );
    assert_eq!(
        nightly.last_at_or_before(utc(2026, 5, 4, 2, 59, 59)),
        Some(utc(2026, 5, 3, 3, 0, 0))
    );
    let half_second_later = utc(2026, 5, 4, 3, 0, 0) + chrono::Duration::milliseconds(500);
    assert_eq!(
        nightly.last_at_or_before(half_second_later),
        Some(utc(2026, 5, 4, 3, 0, 0))
    );
    // And next_after is strict, also from within the due second.
    assert_eq!(
        nightly.next_after(utc(2026, 5, 4, 3, 0, 0)),
        Some(utc(2026, 5, 5, 3, 0, 0))
    );
    assert_eq!(
        nightly.next_after(half_second_later),
        Some(utc(2026, 5, 5, 3, 0, 0))
    );
    // Missed runs: the last due instant before now is after the last run.
    let last_run = utc(2026, 5, 1, 3, 0, 0);
    let now = utc(2026, 5, 4, 12, 0, 0);
    assert!(nightly.last_at_or_before(now) > Some(last_run));
    assert_eq!(
        between(&nightly, last_run + chrono::Duration::seconds(1), now).len(),
        3
    );
}

// ---- Errors ------------------------------------------------------------

#[test]
fn invalid_cron_expressions_say_what_is_wrong() {
    assert_eq!(
        error_message(Schedule::cron("61 * * * *")),
        "invalid cron expression '61 * * * *': minute field '61': number out of bounds; \
         minute takes 0-59"
    );
    assert_eq!(
        error_message(Schedule::cron("0 0 * * 8")),
        "invalid cron expression '0 0 * * 8': day-of-week field '8': number out of bounds; \
         day-of-week takes 0-7 (0 and 7 are Sunday) or sun-sat, with L (last, as in 5L) \
         and # (nth, as in 1#2)"
    );
    assert_eq!(
        error_message(Schedule::cron("0 0 * *")),
        "invalid cron expression '0 0 * *': expected 5 fields 'minute hour day-of-month month \
         day-of-week' or 6 with seconds first 'second minute hour day-of-month month \
         day-of-week', found 4"
    );
    assert!(error_message(Schedule::cron("")).contains("the expression is empty"));
    assert!(error_message(Schedule::cron("   ")).contains("the expression is empty"));
    assert_eq!(
        error_message(Schedule::cron("@fortnightly")),
        "invalid cron expression '@fortnightly': unknown alias '@fortnightly'; the aliases \
         are @yearly, @annually, @monthly, @weekly, @daily and @hourly"
    );
    let message = error_message(Schedule::cron("0 0 * foo *"));
    assert!(message.contains("month field 'foo'"), "{message}");
    assert!(message.contains("1-12 or jan-dec"), "{message}");
    let message = error_message(Schedule::cron("60 0 0 * * *"));
    assert!(message.contains("second field '60'"), "{message}");
    let message = error_message(Schedule::cron("*/0 * * * *"));
    assert!(
        message.contains("minute field '*/0': step cannot be zero"),
        "{message}"
    );
    let message = error_message(Schedule::cron("5/15 * * * *"));
    assert!(message.contains("minute field '5/15'"), "{message}");
}

#[test]
fn invalid_celery_fields_say_what_is_wrong() {
    assert_eq!(
        error_message(Schedule::celery(&Crontab::new().minute("60"))),
        "invalid Celery crontab field minute='60': 60 is out of range: minute takes 0-59"
    );
    assert_eq!(
        error_message(Schedule::celery(&Crontab::new().hour("*/0"))),
        "invalid Celery crontab field hour='*/0': '*/0': the step cannot be zero"
    );
    assert_eq!(
        error_message(Schedule::celery(&Crontab::new().day_of_week("mon-fir"))),
        "invalid Celery crontab field day_of_week='mon-fir': 'fir' is not a number or a name \
         (sun-sat); day_of_week takes 0-6"
    );
    assert_eq!(
        error_message(Schedule::celery(&Crontab::new().month_of_year("0"))),
        "invalid Celery crontab field month_of_year='0': 0 is out of range: month_of_year \
         takes 1-12"
    );
}

#[test]
fn unknown_time_zones_and_zero_intervals_are_errors() {
    assert_eq!(
        error_message(cron("0 3 * * *").in_timezone("Europe/Pariss")),
        "unknown time zone 'Europe/Pariss': expected an IANA time zone name such as \
         'Europe/Paris', 'America/New_York' or 'UTC' (names are case-sensitive)"
    );
    assert!(matches!(
        cron("0 3 * * *").in_timezone(""),
        Err(ScheduleError::UnknownTimeZone(name)) if name.is_empty()
    ));
    assert!(matches!(
        Schedule::every(Duration::from_secs(60))
            .and_then(|every| every.in_timezone("Mars/Olympus")),
        Err(ScheduleError::UnknownTimeZone(_))
    ));
    assert_eq!(
        error_message(Schedule::every(Duration::ZERO)),
        "the interval is zero: an interval schedule needs a period of at least 1 ms"
    );
    assert_eq!(
        error_message(Schedule::every(Duration::from_nanos(500))),
        "the interval 500ns is too short: an interval schedule needs a period of at least 1 ms"
    );
}

// ---- Display -----------------------------------------------------------

#[test]
fn display_names_the_kind_and_the_zone() {
    assert_eq!(
        cron(" 0 3 * * * ")
            .in_timezone("Europe/Paris")
            .expect("zone")
            .to_string(),
        "cron '0 3 * * *' (Europe/Paris)"
    );
    assert_eq!(
        celery(Crontab::new().minute("0").hour("3")).to_string(),
        "celery crontab(minute='0', hour='3') (UTC)"
    );
    assert_eq!(
        Schedule::every(Duration::from_secs(5))
            .expect("valid")
            .to_string(),
        "every 5s"
    );
    assert_eq!(
        Schedule::once(utc(2026, 12, 24, 18, 0, 0)).to_string(),
        "once at 2026-12-24T18:00:00Z"
    );
}

// ---- Robustness --------------------------------------------------------

/// Instants at and near the edges of what croner and chrono handle.
fn odd_instants() -> Vec<DateTime<Utc>> {
    vec![
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::MAX_UTC,
        DateTime::UNIX_EPOCH,
        utc(1, 1, 1, 0, 0, 0),
        utc(1, 1, 2, 0, 0, 0),
        utc(2, 1, 1, 0, 0, 0),
        utc(4999, 12, 31, 23, 59, 59),
        utc(5000, 1, 1, 0, 0, 0),
        utc(5000, 12, 31, 23, 59, 59),
        utc(9999, 12, 31, 23, 59, 59),
        utc(-100, 1, 1, 0, 0, 0),
    ]
}

fn varied_schedules() -> Vec<Schedule> {
    let mut schedules = Vec::new();
    for zone in [
        "UTC",
        "Pacific/Kiritimati",
        "Pacific/Pago_Pago",
        "Europe/Paris",
    ] {
        for expression in [
            "* * * * * *",
            "0 3 * * *",
            "0 0 29 2 *",
            "0 0 30 2 *",
            "0 0 L * 5L",
        ] {
            schedules.push(cron(expression).in_timezone(zone).expect("zone"));
        }
        schedules.push(
            celery(
                Crontab::new()
                    .minute("0")
                    .hour("22-2")
                    .day_of_week("fri-mon"),
            )
            .in_timezone(zone)
            .expect("zone"),
        );
    }
    schedules.push(Schedule::every(Duration::from_millis(1)).expect("valid"));
    schedules.push(Schedule::every(Duration::MAX).expect("valid"));
    schedules.push(Schedule::once(DateTime::<Utc>::MAX_UTC));
    schedules.push(Schedule::once(DateTime::<Utc>::MIN_UTC));
    schedules
}

#[test]
fn odd_instants_never_panic() {
    for schedule in varied_schedules() {
        for at in odd_instants() {
            if let Some(next) = schedule.next_after(at) {
                assert!(next > at, "{schedule}: {next} after {at}");
            }
            if let Some(last) = schedule.last_at_or_before(at) {
                assert!(last <= at, "{schedule}: {last} at or before {at}");
            }
        }
    }
    // Far future: never due, rather than a panic or a wrong year.
    assert_eq!(cron("0 3 * * *").next_after(utc(9999, 1, 1, 0, 0, 0)), None);
    assert_eq!(cron("0 3 * * *").next_after(DateTime::<Utc>::MAX_UTC), None);
    // Far past: the search starts where croner's range does.
    assert_eq!(
        cron("0 3 * * *").next_after(DateTime::<Utc>::MIN_UTC),
        Some(utc(2, 1, 1, 3, 0, 0))
    );
    assert_eq!(
        cron("0 3 * * *").last_at_or_before(DateTime::<Utc>::MIN_UTC),
        None
    );
    // And the far future still has a last run.
    assert_eq!(
        cron("0 3 * * *").last_at_or_before(DateTime::<Utc>::MAX_UTC),
        Some(utc(4999, 12, 31, 3, 0, 0))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "[0-9a-zA-Z*/,#?@+ LW-]{0,30}") {
        if let Ok(schedule) = Schedule::cron(&text) {
            let _ = schedule.next_after(utc(2026, 1, 1, 0, 0, 0));
        }
        if let Ok(crontab) = Crontab::from_string(&text) {
            let schedule = Schedule::celery(&crontab);
            prop_assert!(schedule.is_ok(), "from_string accepted {text:?}, celery did not");
        }
        let field = Crontab::new().hour(text.clone()).day_of_week(text.clone());
        let _ = Schedule::celery(&field);
    }

    #[test]
    fn next_is_after_and_last_is_at_or_before(
        seconds in -62_000_000_000_i64..95_000_000_000_i64,
        nanos in 0_u32..1_000_000_000,
        pick in 0_usize..64,
    ) {
        let schedules = varied_schedules();
        let schedule = &schedules[pick % schedules.len()];
        let at = DateTime::from_timestamp(seconds, nanos).expect("in range");
        if let Some(next) = schedule.next_after(at) {
            prop_assert!(next > at);
            // Nothing due in between: the last due instant before `next`
            // (exclusive) is not after `at`.
            if let Some(previous) = schedule.last_at_or_before(next - chrono::Duration::nanoseconds(1)) {
                prop_assert!(previous <= at, "{schedule}: {previous} lies between {at} and {next}");
            }
        }
        if let Some(last) = schedule.last_at_or_before(at) {
            prop_assert!(last <= at);
        }
    }
}

#![deny(warnings)]

use std::time::Duration;

// Imported only to be named in `autoretry_for`: the import counts as used.
use std::num::ParseIntError;

use task_core::{task, ErrorType, RateLimit, RetryPolicy, Task, TaskError, TaskOptions};

#[derive(Debug)]
struct FlakyError;

impl std::fmt::Display for FlakyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky")
    }
}

impl std::error::Error for FlakyError {}

// Every key at once.
#[task(
    name = "tasks.fetch",
    queue = "fetch",
    track_started,
    early_ack,
    time_limit = 30,
    soft_time_limit = 2.5,
    max_retries = 5,
    default_retry_delay = 0,
    retry_backoff = 1.5,
    retry_backoff_max = 60,
    retry_jitter = false,
    autoretry_for = ["IoError", std::io::Error, ParseIntError, FlakyError],
    rate_limit = "10/m",
    crate = "task_core",
)]
async fn fetch(url: String) -> Result<String, TaskError> {
    Ok(url)
}

// The boolean forms, unlimited retries, a bare rate and float literals.
#[task(
    early_ack = false,
    max_retries = None,
    retry_backoff,
    retry_jitter = true,
    rate_limit = "5",
    time_limit = 1e3,
    default_retry_delay = 0.25,
)]
fn crunch() {}

#[task(retry_backoff = true, rate_limit = " 100 / h ")]
async fn hourly() {}

#[task(retry_backoff = false, soft_time_limit = 10, autoretry_for = ["TimeoutError",])]
async fn soft_only() {}

fn main() {
    let options = <fetch as Task>::OPTIONS;
    assert!(options.early_ack && options.track_started && !options.blocking);
    assert_eq!(options.time_limit, Some(Duration::from_secs(30)));
    assert_eq!(options.soft_time_limit, Some(Duration::from_millis(2500)));
    let retry = options.retry;
    assert_eq!(retry.max_retries, Some(5));
    assert_eq!(retry.default_delay, Duration::ZERO);
    assert_eq!(retry.backoff, Some(Duration::from_millis(1500)));
    assert_eq!(retry.backoff_max, Duration::from_secs(60));
    assert!(!retry.jitter);
    assert_eq!(retry.autoretry_for, ["IoError"]);
    assert_eq!(
        retry.autoretry_types,
        [
            ErrorType::of::<std::io::Error>(),
            ErrorType::of::<ParseIntError>(),
            ErrorType::of::<FlakyError>(),
        ]
    );
    assert!(retry.retries_automatically(&TaskError::from(FlakyError)));
    assert!(!retry.retries_automatically(&TaskError::from(std::fmt::Error)));
    assert_eq!(
        options.rate_limit,
        Some(RateLimit::new(10, Duration::from_secs(60)))
    );

    let options = <crunch as Task>::OPTIONS;
    assert!(!options.early_ack && options.blocking);
    assert_eq!(options.time_limit, Some(Duration::from_secs(1000)));
    assert_eq!(options.soft_time_limit, None);
    assert_eq!(options.retry.max_retries, None);
    assert_eq!(options.retry.backoff, Some(Duration::from_secs(1)));
    assert_eq!(options.retry.default_delay, Duration::from_millis(250));
    assert!(options.retry.jitter);
    assert_eq!(
        options.rate_limit,
        Some(RateLimit::new(5, Duration::from_secs(1)))
    );

    let options = <hourly as Task>::OPTIONS;
    assert_eq!(options.retry.backoff, Some(Duration::from_secs(1)));
    assert_eq!(
        options.rate_limit,
        Some(RateLimit::new(100, Duration::from_secs(3600)))
    );

    let options = <soft_only as Task>::OPTIONS;
    assert_eq!(options.retry.backoff, None);
    assert_eq!(options.retry.autoretry_for, ["TimeoutError"]);
    assert_eq!(options.soft_time_limit, Some(Duration::from_secs(10)));
    assert_eq!(options.time_limit, None);
    assert!(options.retry.autoretry_types.is_empty());
    assert!(options
        .retry
        .retries_automatically(&TaskError::new("TimeoutError", "slow")));
    assert_eq!(
        options.retry.max_retries,
        RetryPolicy::DEFAULT.max_retries
    );
    assert_eq!(
        options,
        TaskOptions::DEFAULT
            .with_soft_time_limit_ms(10_000)
            .with_retry(
                RetryPolicy::DEFAULT
                    .with_backoff_ms(None)
                    .with_autoretry_for(&["TimeoutError"])
            )
    );
}

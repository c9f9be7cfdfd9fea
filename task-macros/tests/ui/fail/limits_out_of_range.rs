use task_core::task;

// Every problem with a number of seconds, at once.
#[task(
    time_limit = 0,
    soft_time_limit = -5,
    default_retry_delay = -0.5,
    retry_backoff = 0.0,
    retry_backoff_max = 0
)]
async fn zero_and_negative() {}

#[task(time_limit = 0.0001, soft_time_limit = 30u64, retry_backoff_max = 1e20)]
async fn inexact() {}

fn main() {}

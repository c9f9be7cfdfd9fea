use task_core::task;

#[task(
    early_ack,
    time_limit = 30,
    soft_time_limit = 10,
    max_retries = 3,
    default_retry_delay = 1,
    retry_backoff,
    retry_backoff_max = 60,
    retry_jitter = false,
    autoretry_for = ["IoError"],
    rate_limit = "1/s",
    early_ack = false,
    time_limit = 60,
    soft_time_limit = 20,
    max_retries = None,
    default_retry_delay = 2,
    retry_backoff = 2,
    retry_backoff_max = 120,
    retry_jitter = true,
    autoretry_for = ["TimeoutError"],
    rate_limit = "2/s"
)]
async fn fetch() {}

fn main() {}

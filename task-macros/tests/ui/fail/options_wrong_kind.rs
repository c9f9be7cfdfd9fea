use task_core::task;

#[task(
    early_ack = "yes",
    time_limit = "30",
    default_retry_delay = LIMIT,
    retry_backoff = "fast",
    retry_jitter = 1
)]
async fn fetch() {}

const LIMIT: u64 = 30;

fn main() {}

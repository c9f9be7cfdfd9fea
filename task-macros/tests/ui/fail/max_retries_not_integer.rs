use task_core::task;

#[task(max_retries = "5")]
async fn string() {}

#[task(max_retries = 5.0)]
async fn float() {}

#[task(max_retries = -1)]
async fn negative() {}

#[task(max_retries = 5_000_000_000)]
async fn too_large() {}

#[task(max_retries = Some(5))]
async fn some() {}

#[task(max_retries = 5u32)]
async fn suffixed() {}

fn main() {}

use task_core::task;

#[task(time_limit = 30, soft_time_limit = 30)]
async fn equal() {}

#[task(soft_time_limit = 60.5, time_limit = 60)]
async fn above() {}

fn main() {}

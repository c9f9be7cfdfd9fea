use task_core::task;

#[task(track_started = "yes")]
async fn add() {}

fn main() {}

use task_core::task;

#[task(crate = "not a path")]
async fn add() {}

fn main() {}

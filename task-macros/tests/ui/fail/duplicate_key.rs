use task_core::task;

#[task(name = "tasks.add", queue = "a", name = "tasks.sum", queue = "b")]
async fn add() {}

fn main() {}

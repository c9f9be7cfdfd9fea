use task_core::task;

#[task(nmae = "tasks.add")]
async fn add() {}

fn main() {}

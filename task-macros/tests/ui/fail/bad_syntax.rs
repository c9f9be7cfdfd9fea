use task_core::task;

#[task(name "tasks.add")]
async fn add() {}

#[task(name = "tasks.sum" queue = "q")]
async fn sum() {}

#[task("tasks.mul")]
async fn mul() {}

fn main() {}

use task_core::task;

const NAME: &str = "tasks.add";

#[task(name = 42)]
async fn add() {}

#[task(name = NAME)]
async fn sum() {}

fn main() {}

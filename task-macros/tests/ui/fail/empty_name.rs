use task_core::task;

#[task(name = "", queue = "")]
async fn add() {}

fn main() {}

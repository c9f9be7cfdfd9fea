use task_core::task;

#[task]
async fn ignore(_: String) {}

fn main() {}

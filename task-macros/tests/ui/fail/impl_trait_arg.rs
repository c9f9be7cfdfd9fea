use task_core::task;

#[task]
async fn greet(_name: impl Into<String>) {}

fn main() {}

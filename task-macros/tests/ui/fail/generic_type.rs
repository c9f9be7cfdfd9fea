use task_core::task;

#[task]
async fn echo<T: serde::Serialize>(_value: T) {}

fn main() {}

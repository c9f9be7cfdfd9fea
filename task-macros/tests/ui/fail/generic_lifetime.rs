use task_core::task;

#[task]
async fn echo<'a>(_value: String) {}

fn main() {}

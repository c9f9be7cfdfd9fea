use task_core::task;

#[task]
async fn repeat<const N: usize>(_value: String) {}

fn main() {}

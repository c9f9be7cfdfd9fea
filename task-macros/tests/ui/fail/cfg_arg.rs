use task_core::task;

#[task]
async fn greet(#[cfg(test)] _name: String) {}

fn main() {}

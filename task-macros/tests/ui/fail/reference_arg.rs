use task_core::task;

#[task]
async fn greet(_name: &str) {}

#[task]
async fn sum(_values: &[i64]) {}

#[task]
async fn maybe(_name: Option<&'static String>) {}

fn main() {}

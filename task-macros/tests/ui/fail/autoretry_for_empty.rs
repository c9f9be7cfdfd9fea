use task_core::task;

#[task(autoretry_for = [])]
async fn nothing() {}

#[task(autoretry_for = "IoError")]
async fn not_a_list() {}

fn main() {}

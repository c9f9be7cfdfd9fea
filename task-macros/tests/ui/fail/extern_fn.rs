use task_core::task;

#[task]
extern "C" fn callback(_x: i32) {}

fn main() {}

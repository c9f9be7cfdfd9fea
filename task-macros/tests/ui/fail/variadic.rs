use task_core::task;

#[task]
unsafe extern "C" fn printf(_format: usize, _args: ...) {}

fn main() {}

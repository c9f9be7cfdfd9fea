use task_core::task;

#[task]
unsafe fn poke(_address: usize) {}

fn main() {}

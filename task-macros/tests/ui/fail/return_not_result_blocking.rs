use task_core::task;

#[task]
fn add(x: i64, y: i64) -> Option<i64> {
    Some(x + y)
}

fn main() {}

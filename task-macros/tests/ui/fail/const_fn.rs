use task_core::task;

#[task]
const fn answer() -> Result<i64, task_core::TaskError> {
    Ok(42)
}

fn main() {}

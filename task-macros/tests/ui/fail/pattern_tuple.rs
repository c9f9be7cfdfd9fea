use task_core::task;

#[task]
async fn add((x, y): (i64, i64)) -> Result<i64, task_core::TaskError> {
    Ok(x + y)
}

fn main() {}

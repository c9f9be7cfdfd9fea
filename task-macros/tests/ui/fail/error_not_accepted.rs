use task_core::task;

#[task]
async fn add(x: i64, y: i64) -> Result<i64, Vec<u8>> {
    Ok(x + y)
}

#[task]
fn add_blocking(x: i64, y: i64) -> Result<i64, i64> {
    Ok(x + y)
}

fn main() {}

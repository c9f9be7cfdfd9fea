use task_core::task;

// After an error the function is still there: only the attribute's error is
// reported, not "cannot find function `add`".
#[task(nmae = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

async fn caller() -> i64 {
    add(1, 2).await
}

fn main() {
    let _ = caller();
}

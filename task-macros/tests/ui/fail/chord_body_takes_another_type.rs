use task_core::canvas::{chord, group};
use task_core::{task, TaskError};

#[task(name = "ui.chord.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[task(name = "ui.chord.mean")]
async fn mean(values: Vec<f64>) -> Result<f64, TaskError> {
    Ok(values.iter().sum::<f64>() / values.len() as f64)
}

#[task(name = "ui.chord.total")]
async fn total(values: Vec<i64>) -> Result<i64, TaskError> {
    Ok(values.iter().sum())
}

fn main() {
    // The header's values are `Vec<i64>`; `mean` takes `Vec<f64>` first.
    let _ = chord(group([add.s(1, 2)]), mean.partial());
    // Accepted: `total` takes `Vec<i64>` first.
    let _ = chord(group([add.s(1, 2)]), total.partial());
}

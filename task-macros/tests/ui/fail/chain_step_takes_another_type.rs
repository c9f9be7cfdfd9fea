use task_core::canvas::chain;
use task_core::{task, TaskError};

#[task(name = "ui.chain.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[task(name = "ui.chain.shout")]
async fn shout(text: String, times: usize) -> Result<String, TaskError> {
    Ok(text.repeat(times))
}

fn main() {
    // `add` returns an i64; `shout` takes a String first.
    let _ = chain(add.s(1, 2)).then(shout.partial(2));
    // Close is not enough: i32 is not i64.
    let _ = chain(add.s(1, 2)).then(task_core::canvas::Partial::<i32, i32>::new(
        task_core::Signature::new("py.neg"),
    ));
}

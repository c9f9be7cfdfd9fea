use std::rc::Rc;

use task_core::task;

async fn pause() {}

#[task]
async fn hold(x: i64) {
    let shared = Rc::new(x);
    pause().await;
    drop(shared);
}

fn main() {}

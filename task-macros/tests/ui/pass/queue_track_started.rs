#![deny(warnings)]

use task_core::{task, Task, TaskOptions};

#[task(queue = "emails", track_started)]
async fn send() {}

#[task(name = "tasks.quiet", track_started = false,)]
async fn quiet() {}

#[task(track_started = true, queue = "cpu")]
fn crunch() {}

fn main() {
    let options = <send as Task>::OPTIONS;
    assert_eq!(options.queue, Some("emails"));
    assert!(options.track_started);
    assert!(!options.blocking);

    assert_eq!(<quiet as Task>::OPTIONS, TaskOptions::DEFAULT);

    let options_crunch = <crunch as Task>::OPTIONS;
    assert_eq!(options_crunch.queue, Some("cpu"));
    assert!(options_crunch.track_started && options_crunch.blocking);
}

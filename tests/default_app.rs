//! `task.delay(..)` through the process's default app (its own test binary,
//! so no other test replaces the default app meanwhile).

mod common;

use common::RESULT_TIMEOUT;
use task_core::{App, Error};
use task_examples::add;
use task_worker::Worker;

#[tokio::test]
async fn delay_publishes_through_the_default_app() {
    let queue = common::unique_queue("default");
    // The worker consumes the app's default queue, here a queue of this test's own.
    let app = App::builder()
        .broker_url(common::broker_url())
        .default_queue(queue.clone())
        .queue(common::test_queue_spec(&queue))
        .connect()
        .await
        .expect("RabbitMQ is running");
    assert_eq!(App::current().unwrap().default_queue(), queue);

    let worker = Worker::builder()
        .app(app.clone())
        .concurrency(2)
        .build()
        .await
        .unwrap();
    assert_eq!(worker.queues(), std::slice::from_ref(&queue));
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    let pending = add.delay(2, 3).await.unwrap();
    let sum: i64 = pending.get(RESULT_TIMEOUT).await.unwrap();
    assert_eq!(sum, 5);
    assert_eq!(
        add.run(2, 3).await.unwrap(),
        5,
        "the body stays callable directly"
    );

    stop.cancel();
    running.await.unwrap().unwrap();
    app.broker().delete_queue(&queue).await.unwrap();
    app.close().await.unwrap();
    let after_close = add.delay(1, 1).await;
    assert!(
        matches!(after_close, Err(Error::Broker(_))),
        "{after_close:?}"
    );
}

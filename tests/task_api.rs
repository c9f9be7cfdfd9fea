//! What a task body can ask of its message besides a value, on the real
//! RabbitMQ with a Rust worker and caller: to end without a result
//! (Celery's `Ignore`), to reject its message with or without requeue
//! (Celery's `Reject`), and to fail with a named exception class and its
//! argument list.

mod common;

use serde_json::{json, Value};
use task_core::broker::QueueSpec;
use task_core::{current_task, task, Error, TaskError};

/// Ends without a result.
#[task(name = "tests.api.ignored")]
async fn ignored() -> Result<i64, TaskError> {
    Err(TaskError::ignore())
}

/// Rejects its first delivery (requeued or not); a redelivery succeeds and
/// says it was one.
#[task(name = "tests.api.reject")]
async fn reject_first(requeue: bool) -> Result<bool, TaskError> {
    let task = current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    if task.delivery().redelivered {
        return Ok(true);
    }
    Err(TaskError::reject("not now", requeue))
}

/// Fails as `raise ExpectedException('Task expected to fail', 'test')` in
/// the Python module `interop_errors` would.
#[task(name = "tests.api.expected")]
async fn expected() -> Result<i64, TaskError> {
    Err(TaskError::new("ExpectedException", "Task expected to fail")
        .with_module("interop_errors")
        .with_args([json!("Task expected to fail"), json!("test")]))
}

#[tokio::test]
async fn an_ignored_task_tells_its_caller_ignored_and_is_acked() {
    let w = common::TestWorker::start("api-ignore", 2).await;
    let handle = ignored
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    match handle.get(common::RESULT_TIMEOUT).await {
        Err(Error::Ignored { task_id }) => assert_eq!(task_id, handle.id()),
        other => panic!("IGNORED, not {other:?}"),
    }
    // Acked: nothing goes back to the queue when the worker stops.
    let (app, queue) = w.halt().await;
    assert_eq!(app.broker().queue_message_count(&queue).await.unwrap(), 0);
    common::TestWorker::start_on(queue, app, 1, |b| b)
        .await
        .stop()
        .await;
}

#[tokio::test]
async fn a_task_that_rejects_with_requeue_runs_again_as_a_redelivery() {
    let w = common::TestWorker::start("api-requeue", 2).await;
    let handle = reject_first
        .s(true)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert!(handle.get(common::RESULT_TIMEOUT).await.unwrap());
    w.stop().await;
}

#[tokio::test]
async fn a_task_that_rejects_without_requeue_is_dead_lettered_and_fails_with_reject() {
    let w = common::TestWorker::start("api-reject", 2).await;
    let handle = reject_first
        .s(false)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let failure = match handle.get(common::RESULT_TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => failure,
        other => panic!("FAILURE, not {other:?}"),
    };
    assert_eq!(failure.exc_type, "Reject");
    assert_eq!(failure.exc_module.as_deref(), Some("celery.exceptions"));
    assert_eq!(failure.exc_args, [json!("not now"), json!(false)]);
    // The caller is told before the copy is dead-lettered: wait for it.
    let (app, queue) = w.halt().await;
    let dead_letters = QueueSpec::dead_letter_queue(&queue).name;
    let deadline = tokio::time::Instant::now() + common::RESULT_TIMEOUT;
    while app.broker().queue_message_count(&dead_letters).await.ok() != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let letter = common::next_message(&app, &dead_letters).await;
    assert_eq!(
        letter.properties.correlation_id.as_deref(),
        Some(handle.id())
    );
    common::TestWorker::start_on(queue, app, 1, |b| b)
        .await
        .stop()
        .await;
}

#[tokio::test]
async fn a_failure_carries_its_exception_class_module_and_arguments() {
    let w = common::TestWorker::start("api-exception", 2).await;
    let handle = expected
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let failure = match handle.get(common::RESULT_TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => failure,
        other => panic!("FAILURE, not {other:?}"),
    };
    assert_eq!(failure.exc_type, "ExpectedException");
    assert_eq!(failure.exc_module.as_deref(), Some("interop_errors"));
    let args: Vec<Value> = vec![json!("Task expected to fail"), json!("test")];
    assert_eq!(failure.exc_args, args);
    assert_eq!(failure.message, "Task expected to fail, test");
    w.stop().await;
}

/// On its first run, asks to run again on `other_queue` with its argument
/// as a keyword argument instead of a positional one; reports the second.
#[task(name = "tests.api.moved")]
async fn moved(tag: String, other_queue: String) -> Result<Value, TaskError> {
    let task = current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    if task.retries() == 0 {
        let kwargs = json!({"tag": format!("{tag}, then kwargs"), "other_queue": other_queue});
        return Err(TaskError::msg("move").retry_with(
            task_core::Retry::new()
                .args([])
                .kwargs(kwargs.as_object().cloned().unwrap_or_default())
                .countdown(std::time::Duration::from_millis(100))
                .queue(other_queue),
        ));
    }
    Ok(json!({"tag": tag, "queue": task.queue(), "retries": task.retries()}))
}

/// Asks for a retry that its own `max_retries` of 0 refuses.
#[task(name = "tests.api.no_more", max_retries = 5)]
async fn no_more() -> Result<i64, TaskError> {
    Err(TaskError::msg("give up").retry_with(task_core::Retry::new().max_retries(0)))
}

#[tokio::test]
async fn a_retry_can_switch_arguments_and_queue_and_limit_itself() {
    let queue = common::unique_queue("api-retry");
    let other = common::unique_queue("api-retry-other");
    let app = common::client(&[&queue, &other]).await;
    let queues = [queue.clone(), other.clone()];
    let w = common::TestWorker::start_on(queue, app, 2, |b| b.queues(queues)).await;
    let handle = moved
        .s("args".to_owned(), other.clone())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let seen = handle.get(common::RESULT_TIMEOUT).await.unwrap();
    assert_eq!(
        seen,
        json!({"tag": "args, then kwargs", "queue": other, "retries": 1})
    );

    let refused = no_more
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    match refused.get(common::RESULT_TIMEOUT).await {
        Err(Error::TaskFailed(failure)) => assert_eq!(failure.message, "give up"),
        other => panic!("a failure without retries, not {other:?}"),
    }
    w.app.broker().delete_queue(&other).await.unwrap();
    w.stop().await;
}

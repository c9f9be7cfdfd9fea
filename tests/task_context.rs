//! What a running task sees of its request (`current_task()`), against the
//! real RabbitMQ: its place in the workflow (`root_id`, `parent_id`, group)
//! as the message carried it, and how the message was delivered.

mod common;

use futures_util::StreamExt;
use serde_json::{json, Value};
use task_core::broker::ConsumeOptions;
use task_core::protocol::task_message::{encode_task, TaskCall};
use task_core::{current_task, task, TaskError};

/// Reports what the task sees of its own request.
#[task(name = "tests.context.report")]
async fn report() -> Result<Value, TaskError> {
    let task = current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    let delivery = task.delivery();
    Ok(json!({
        "id": task.id(),
        "root_id": task.root_id(),
        "parent_id": task.parent_id(),
        "group": task.group().map(|(id, index)| json!([id, index])),
        "exchange": delivery.exchange,
        "routing_key": delivery.routing_key,
        "redelivered": delivery.redelivered,
        "priority": delivery.priority,
    }))
}

#[tokio::test]
async fn a_task_sees_its_lineage_group_and_delivery() {
    // Every worker of this binary gives the `State<App>` `trace_of` takes.
    let queue = common::unique_queue("context");
    let app = common::client(&[&queue]).await;
    let worker =
        common::TestWorker::start_on(queue.clone(), app.clone(), 2, |b| b.state(app)).await;

    // A top-level call: its own root, no parent, no group.
    let top = report
        .s()
        .queue(queue.clone())
        .priority(3)
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    let seen = top.get(common::RESULT_TIMEOUT).await.unwrap();
    assert_eq!(seen["root_id"], seen["id"]);
    assert_eq!(seen["parent_id"], Value::Null);
    assert_eq!(seen["group"], Value::Null);
    assert_eq!(seen["exchange"], "");
    assert_eq!(seen["routing_key"], queue.as_str());
    assert_eq!(seen["redelivered"], false);
    assert_eq!(seen["priority"], 3);

    // A group member deep in a workflow, as a Python worker sends it.
    let replies = common::unique_queue("context-replies");
    worker
        .app
        .broker()
        .declare_queue(&common::test_queue_spec(&replies))
        .await
        .unwrap();
    let mut results = worker
        .app
        .broker()
        .consume(std::slice::from_ref(&replies), ConsumeOptions::no_ack())
        .await
        .unwrap();
    let mut message = encode_task(&TaskCall {
        id: "member-1",
        name: "tests.context.report",
        args: &[],
        kwargs: &[],
        reply_to: Some(&replies),
        eta: None,
        expires: None,
        priority: None,
        time_limit: None,
        soft_time_limit: None,
        ignore_result: false,
        retries: 0,
        root_id: Some("root-0"),
        parent_id: Some("parent-1"),
    })
    .unwrap();
    let headers = &mut message.properties.headers;
    headers.insert_str("group", "group-7");
    headers.insert_json("group_index", &json!(2));
    worker
        .app
        .broker()
        .publish("", &queue, &message)
        .await
        .unwrap();
    let result = tokio::time::timeout(common::RESULT_TIMEOUT, results.deliveries.next())
        .await
        .expect("a result")
        .unwrap()
        .unwrap();
    results.cancel.close().await.unwrap();
    let body: Value = serde_json::from_slice(&result.message.body).unwrap();
    assert_eq!(body["status"], "SUCCESS", "{body}");
    let seen = &body["result"];
    assert_eq!(seen["id"], "member-1");
    assert_eq!(seen["root_id"], "root-0");
    assert_eq!(seen["parent_id"], "parent-1");
    assert_eq!(seen["group"], json!(["group-7", 2]));
    worker.app.broker().delete_queue(&replies).await.unwrap();
    worker.stop().await;
}

/// Its trace (W3C `traceparent`), and the trace of the task it calls.
#[task(name = "tests.context.trace")]
async fn trace_of(
    app: task_core::State<task_core::App>,
    queue: String,
    nested: bool,
) -> Result<Value, TaskError> {
    let task = current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    let mine = task.trace().map(|t| t.to_string());
    let called = if nested {
        let child = trace_of
            .s(queue.clone(), false)
            .queue(queue)
            .apply_async_with(&app)
            .await
            .map_err(|e| TaskError::msg(e.to_string()))?;
        child
            .get(common::RESULT_TIMEOUT)
            .await
            .map_err(|e| TaskError::msg(e.to_string()))?["mine"]
            .clone()
    } else {
        Value::Null
    };
    Ok(json!({ "mine": mine, "called": called }))
}

#[tokio::test]
async fn a_trace_goes_from_the_caller_through_the_task_into_its_calls() {
    use task_core::trace_context::TraceParent;
    let queue = common::unique_queue("context-trace");
    let app = common::client(&[&queue]).await;
    let worker =
        common::TestWorker::start_on(queue, app.clone(), 4, |builder| builder.state(app)).await;
    let queue = worker.queue.clone();
    // The caller's own trace, as an instrumented client would send it.
    let callers = TraceParent::new_root();
    let seen = trace_of
        .s(queue.clone(), true)
        .queue(queue.clone())
        .header("traceparent", callers.to_string())
        .apply_async_with(&worker.app)
        .await
        .unwrap()
        .get(common::RESULT_TIMEOUT)
        .await
        .unwrap();
    let parse = |v: &Value| TraceParent::parse(v.as_str().expect("a traceparent")).unwrap();
    let (task, called) = (parse(&seen["mine"]), parse(&seen["called"]));
    assert_eq!(task.trace_id, callers.trace_id, "{seen}");
    assert_ne!(task.span_id, callers.span_id);
    assert_eq!(called.trace_id, callers.trace_id, "{seen}");
    assert_ne!(called.span_id, task.span_id);

    // Without one, `.delay()` starts a trace.
    let fresh = trace_of
        .s(queue.clone(), false)
        .queue(queue)
        .apply_async_with(&worker.app)
        .await
        .unwrap()
        .get(common::RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_ne!(parse(&fresh["mine"]).trace_id, callers.trace_id);
    worker.stop().await;
}

/// A chain step: what the steps before it saw, then its own trace and the
/// `traceparent` its message carried.
#[task(name = "tests.context.trace_steps")]
async fn trace_steps(mut seen: Vec<Value>) -> Result<Vec<Value>, TaskError> {
    let task = current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    seen.push(json!({
        "mine": task.trace().map(|t| t.to_string()),
        "carried": task.header("traceparent").cloned(),
    }));
    Ok(seen)
}

#[tokio::test]
async fn a_chains_steps_are_spans_of_one_trace_each_the_parent_of_the_next() {
    use task_core::canvas::chain;
    use task_core::trace_context::TraceParent;
    let queue = common::unique_queue("context-trace-chain");
    let app = common::client(&[&queue]).await;
    let worker = common::TestWorker::start_on(queue, app.clone(), 4, |b| b.state(app)).await;
    let q = worker.queue.clone();
    let callers = TraceParent::new_root();
    let seen = chain(
        trace_steps
            .s(Vec::new())
            .queue(q.clone())
            .header("traceparent", callers.to_string()),
    )
    .then(trace_steps.partial().with(|s| s.queue(q.clone())))
    .then(trace_steps.partial().with(|s| s.queue(q.clone())))
    .apply_async_with(&worker.app)
    .await
    .unwrap()
    .get(common::RESULT_TIMEOUT)
    .await
    .unwrap();
    let parse = |v: &Value| TraceParent::parse(v.as_str().expect("a traceparent")).unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let mut parent = callers;
    for step in &seen {
        let (mine, carried) = (parse(&step["mine"]), parse(&step["carried"]));
        assert_eq!(
            carried, parent,
            "each step's message names the step before: {seen:?}"
        );
        assert_eq!(mine.trace_id, callers.trace_id, "{seen:?}");
        parent = mine;
    }
    worker.stop().await;
}

/// Reports the rest of its request (Celery's `self.request` fields).
#[task(name = "tests.context.request")]
async fn request_fields() -> Result<Value, TaskError> {
    let task = current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    let (hard, soft) = task.time_limits();
    Ok(json!({
        "eta": task.eta().map(|t| t.timestamp_millis()),
        "expires": task.expires().map(|t| t.timestamp_millis()),
        "reply_to": task.reply_to(),
        "correlation_id": task.correlation_id(),
        "content_type": task.content_type(),
        "ignore_result": task.ignore_result(),
        "time_limit": hard.map(|d| d.as_secs_f64()),
        "soft_time_limit": soft.map(|d| d.as_secs_f64()),
        "replaced_task_nesting": task.replaced_task_nesting(),
        "stamps": task.stamps(),
        "hostname": task.hostname(),
        "is_eager": task.is_eager(),
        "priority": task.delivery().priority,
        "retries": task.retries(),
    }))
}

#[tokio::test]
async fn a_task_sees_its_eta_expiry_limits_reply_queue_and_worker() {
    let queue = common::unique_queue("context-request");
    let app = common::client(&[&queue]).await;
    let w = common::TestWorker::start_on(queue, app.clone(), 2, |b| b.state(app)).await;
    let eta = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let handle = request_fields
        .s()
        .queue(w.queue.clone())
        .eta(eta)
        .expires_at(expires)
        .time_limit(std::time::Duration::from_secs(30))
        .soft_time_limit(std::time::Duration::from_secs(20))
        .priority(4)
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let seen = handle.get(common::RESULT_TIMEOUT).await.unwrap();
    assert_eq!(seen["eta"], eta.timestamp_millis(), "{seen}");
    assert_eq!(seen["expires"], expires.timestamp_millis());
    assert!(seen["reply_to"].as_str().is_some_and(|q| !q.is_empty()));
    assert_eq!(seen["correlation_id"], handle.id());
    assert_eq!(seen["content_type"], "application/json");
    assert_eq!(seen["ignore_result"], false);
    assert_eq!(
        (seen["time_limit"].clone(), seen["soft_time_limit"].clone()),
        (json!(30.0), json!(20.0))
    );
    assert_eq!(seen["replaced_task_nesting"], 0);
    assert_eq!(seen["stamps"], Value::Null);
    assert_eq!(
        seen["hostname"],
        format!("{}@{}", w.queue, task_core::control::host_name())
    );
    assert_eq!(seen["is_eager"], false);
    assert_eq!(seen["priority"], 4);
    assert_eq!(seen["retries"], 0);

    // Eager mode says so, and runs on no worker.
    let eager_app = task_core::App::eager();
    let eager = request_fields
        .s()
        .apply_async_with(&eager_app)
        .await
        .unwrap()
        .get(common::RESULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        (eager["is_eager"].clone(), eager["hostname"].clone()),
        (json!(true), Value::Null)
    );
    w.stop().await;
}

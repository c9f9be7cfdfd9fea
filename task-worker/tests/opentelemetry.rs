//! The OpenTelemetry bridge (task-core's `opentelemetry` feature), with an
//! `OpenTelemetryLayer` exporting to memory, against the real RabbitMQ and
//! the real Celery 5.7 under `opentelemetry-instrumentation-celery`: a
//! client's span, the tasks it calls, the tasks they call and Python's
//! spans on either side make one trace, each span the parent of the next.
//! Alone in its test binary: the subscriber is global to the process.
//! Here, not among the root package's tests, so that the feature is on only
//! for this package's tests: the root package's examples (the benchmark)
//! are built as users build the framework, without it.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{json, Value};
use task_core::broker::QueueSpec;
use task_core::{current_task, task, App, Signature, TaskError};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// The spans this process ended, exported to memory.
fn exported() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the first subscriber of this test binary");
        exporter
    })
}

/// The exported span named `name` whose `field` is `value`, waited for
/// (a span is exported when it closes, just after its task's result went).
async fn span_where(name: &str, field: &str, value: &str) -> SpanData {
    let deadline = tokio::time::Instant::now() + common::RESULT_TIMEOUT;
    loop {
        let spans = exported().get_finished_spans().expect("the exported spans");
        if let Some(span) = spans.into_iter().find(|span| {
            span.name == name
                && span
                    .attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == field && kv.value.as_str() == value)
        }) {
            return span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{name}` span with {field}={value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hex_trace(span: &SpanData) -> String {
    span.span_context.trace_id().to_string()
}

fn hex_span(span: &SpanData) -> String {
    span.span_context.span_id().to_string()
}

/// Its own place in the trace, and, if `queue` is given, the value of the
/// same task called from it there.
#[task(name = "tests.otel.where")]
async fn where_am_i(app: task_core::State<App>, queue: Option<String>) -> Result<Value, TaskError> {
    let task = current_task().ok_or_else(|| TaskError::msg("no task context"))?;
    let called = match queue {
        Some(queue) => where_am_i
            .s(None)
            .queue(queue)
            .apply_async_with(&app)
            .await
            .map_err(|e| TaskError::msg(e.to_string()))?
            .get(common::RESULT_TIMEOUT)
            .await
            .map_err(|e| TaskError::msg(e.to_string()))?,
        None => Value::Null,
    };
    Ok(json!({
        "id": task.id(),
        "trace": task.trace().map(|t| t.to_string()),
        "called": called,
    }))
}

/// Deletes `queue` and what was declared with it (through an app of its
/// own: a stopped worker closed its app's connection).
async fn cleanup(queue: &str) {
    let app = common::plain_app().await;
    app.broker().delete_queue(queue).await.unwrap();
    let dead_letters = QueueSpec::dead_letter_queue(queue).name;
    app.broker().delete_queue(&dead_letters).await.unwrap();
    app.broker().delete_exchange(queue).await.unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn a_clients_span_its_task_and_the_task_it_calls_are_parent_and_children() {
    exported();
    let queue = common::unique_queue("otel-rust");
    let app = common::plain_app().await;
    let worker =
        common::TestWorker::start_on(queue.clone(), app.clone(), 4, |b| b.state(app.clone())).await;
    let client = tracing::info_span!("client", call = "nested");
    let seen = async {
        where_am_i
            .s(Some(queue.clone()))
            .queue(queue.clone())
            .apply_async_with(&worker.app)
            .await
            .unwrap()
            .get(common::RESULT_TIMEOUT)
            .await
            .unwrap()
    }
    .instrument(client)
    .await;
    let client = span_where("client", "call", "nested").await;
    let outer = span_where("task", "task_id", seen["id"].as_str().unwrap()).await;
    let inner = span_where("task", "task_id", seen["called"]["id"].as_str().unwrap()).await;
    assert_eq!(hex_trace(&outer), hex_trace(&client));
    assert_eq!(outer.parent_span_id, client.span_context.span_id());
    assert_eq!(hex_trace(&inner), hex_trace(&client));
    assert_eq!(inner.parent_span_id, outer.span_context.span_id());
    // What the task sees of its trace is its exported span.
    assert_eq!(
        seen["trace"],
        format!("00-{}-{}-01", hex_trace(&outer), hex_span(&outer))
    );
    worker.stop().await;
    cleanup(&queue).await;
}

#[tokio::test]
async fn a_python_clients_publish_span_is_the_parent_of_the_rust_task() {
    exported();
    let queue = common::unique_queue("otel-py2rs");
    let app = common::plain_app().await;
    let worker =
        common::TestWorker::start_on(queue.clone(), app.clone(), 2, |b| b.state(app.clone())).await;
    let output = common::python_output(vec![
        common::repo()
            .join("tests/interop/py_otel.py")
            .display()
            .to_string(),
        "client".into(),
        queue.clone(),
        "tests.otel.where".into(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python: Value = serde_json::from_slice(&output.stdout).expect("JSON from py_otel.py");
    let publish = &python["publish"][0];
    let task = span_where("task", "task_id", python["value"]["id"].as_str().unwrap()).await;
    assert_eq!(hex_trace(&task), publish["trace_id"], "{python}");
    assert_eq!(
        task.parent_span_id.to_string(),
        publish["span_id"],
        "{python}"
    );
    worker.stop().await;
    cleanup(&queue).await;
}

/// A Python worker under the instrumentation, on `queue`.
struct PythonWorker(Child);

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_rust_clients_span_is_the_parent_of_the_python_tasks_run() {
    exported();
    let queue = common::unique_queue("otel-rs2py");
    let app = common::plain_app().await;
    app.ensure_queue(&queue).await.unwrap();
    let _python = PythonWorker(
        Command::new(common::python())
            .args(["py_otel.py", "worker", &queue])
            .current_dir(common::repo().join("tests/interop"))
            .env("BROKER_URL", common::broker_url())
            .stdin(Stdio::null())
            .spawn()
            .expect("the python worker starts"),
    );
    let client = tracing::info_span!("client", call = "python");
    let seen = async {
        Signature::<Value>::new("py.otel.where")
            .queue(queue.clone())
            .apply_async_with(&app)
            .await
            .unwrap()
            .get(common::RESULT_TIMEOUT)
            .await
            .unwrap()
    }
    .instrument(client)
    .await;
    let client = span_where("client", "call", "python").await;
    assert_eq!(seen["trace_id"], hex_trace(&client), "{seen}");
    assert_eq!(seen["parent_span_id"], hex_span(&client), "{seen}");
    cleanup(&queue).await;
}

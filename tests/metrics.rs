//! Prometheus metrics of a worker (`task_worker::metrics::serve`, the
//! worker's `--metrics-addr`), scraped after known work on the real
//! RabbitMQ and parsed as Prometheus' text exposition. Alone in its test
//! binary: the recorder is global to the process.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestWorker;
use serde_json::json;
use serde_json::value::to_raw_value;
use task_core::protocol::task_message::{encode_task, TaskCall, PUBLISHED_AT};
use task_examples as _;

const TIMEOUT: Duration = Duration::from_secs(20);
/// A countdown longer than any queue wait of this test's other calls.
const COUNTDOWN: Duration = Duration::from_secs(3);

/// The samples of an exposition: `name{labels}` → value (labels as
/// written, in their order), and the declared type of each metric.
fn parse(exposition: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in exposition.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        samples.insert(series.to_owned(), value);
    }
    (samples, types)
}

async fn scrape(addr: &str) -> String {
    let (status, body) = common::http("GET", &format!("http://{addr}/metrics"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_scrape_counts_the_tasks_run_by_name_and_outcome() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    task_worker::metrics::serve(addr.parse().unwrap()).expect("metrics served");
    let w = TestWorker::start("metrics", 2).await;
    for i in 0..3 {
        let add = w
            .app
            .signature("tasks.add")
            .arg(i)
            .arg(1)
            .returning::<i64>();
        let sum = add
            .queue(w.queue.clone())
            .apply_async_with(&w.app)
            .await
            .unwrap();
        assert_eq!(sum.get(TIMEOUT).await.unwrap(), i + 1);
    }
    let parse_int = w
        .app
        .signature("tasks.parse_int")
        .arg("x")
        .returning::<i64>();
    let failed = parse_int
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert!(failed.get(TIMEOUT).await.is_err());
    // Waited out its countdown: its queue wait counts from its ETA.
    let later = w
        .app
        .signature("tasks.add")
        .arg(20)
        .arg(1)
        .returning::<i64>()
        .queue(w.queue.clone())
        .countdown(COUNTDOWN)
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(later.get(TIMEOUT).await.unwrap(), 21);
    // A message that does not say when it was published (as Celery's):
    // run, and not in the queue-wait histogram.
    let replies = common::unique_queue("metrics-replies");
    let spec = common::test_queue_spec(&replies);
    w.app.broker().declare_queue(&spec).await.unwrap();
    let args = [to_raw_value(&1).unwrap(), to_raw_value(&2).unwrap()];
    let mut message = encode_task(&TaskCall {
        id: "metrics-celery-style",
        name: "tasks.add",
        args: &args,
        kwargs: &[],
        reply_to: Some(&replies),
        eta: None,
        expires: None,
        priority: None,
        time_limit: None,
        soft_time_limit: None,
        ignore_result: false,
        retries: 0,
        root_id: None,
        parent_id: None,
    })
    .unwrap();
    assert!(message.properties.headers.remove(PUBLISHED_AT).is_some());
    w.app
        .broker()
        .publish("", &w.queue, &message)
        .await
        .unwrap();
    let reply = common::next_message(&w.app, &replies).await;
    assert!(String::from_utf8_lossy(&reply.body).contains("SUCCESS"));
    w.app.broker().delete_queue(&replies).await.unwrap();
    w.stop().await;

    let (samples, types) = parse(&scrape(&addr).await);
    let sample = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
    };
    assert_eq!(
        sample(r#"task_worker_tasks_total{task="tasks.parse_int",state="failed"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"task_worker_task_runtime_seconds_count{task="tasks.add"}"#),
        5.0
    );
    assert_eq!(types["task_worker_task_runtime_seconds"], "histogram");
    // The three calls and the countdown's, not the Celery-style message
    // (it ran: five successes).
    assert_eq!(
        sample(r#"task_worker_tasks_total{task="tasks.add",state="succeeded"}"#),
        5.0
    );
    assert_eq!(
        sample(r#"task_worker_queue_wait_seconds_count{task="tasks.add"}"#),
        4.0
    );
    // Measured from the countdown's ETA, not from its publish.
    let waited = sample(r#"task_worker_queue_wait_seconds_sum{task="tasks.add"}"#);
    assert!(waited < COUNTDOWN.as_secs_f64(), "{waited}");
    assert_eq!(types["task_worker_queue_wait_seconds"], "histogram");
    assert!(samples
        .keys()
        .any(|k| k.starts_with("task_worker_task_runtime_seconds_bucket")));
    assert_eq!(sample("task_worker_tasks_active"), 0.0);
    assert_eq!(sample("task_worker_messages_held"), 0.0);
    assert!(sample("task_client_published_total") >= 4.0);
    assert_eq!(types["task_client_publish_seconds"], "histogram");
}

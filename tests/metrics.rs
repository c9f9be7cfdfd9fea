//! Prometheus metrics of a worker (`task_worker::metrics::serve`, the
//! worker's `--metrics-addr`), scraped after known work on the real
//! RabbitMQ and parsed as Prometheus' text exposition. Alone in its test
//! binary: the recorder is global to the process.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestWorker;
use serde_json::json;
use task_examples as _;

const TIMEOUT: Duration = Duration::from_secs(20);

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
    w.stop().await;

    let (samples, types) = parse(&scrape(&addr).await);
    let sample = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
    };
    assert_eq!(
        sample(r#"task_worker_tasks_total{task="tasks.add",state="succeeded"}"#),
        3.0
    );
    assert_eq!(
        sample(r#"task_worker_tasks_total{task="tasks.parse_int",state="failed"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"task_worker_task_runtime_seconds_count{task="tasks.add"}"#),
        3.0
    );
    assert_eq!(types["task_worker_task_runtime_seconds"], "histogram");
    assert!(samples
        .keys()
        .any(|k| k.starts_with("task_worker_task_runtime_seconds_bucket")));
    assert_eq!(sample("task_worker_tasks_active"), 0.0);
    assert_eq!(sample("task_worker_messages_held"), 0.0);
    assert!(sample("task_client_published_total") >= 4.0);
    assert_eq!(types["task_client_publish_seconds"], "histogram");
}

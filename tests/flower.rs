//! Flower 2.2 (from PyPI, in the test venv) against a Rust worker on the
//! real RabbitMQ: the worker is online with its stats, queues and tasks;
//! its tasks are listed with state, arguments, result and runtime (task
//! events turned on by Flower itself); Flower's buttons (pool grow,
//! revoke, shutdown) act on it; and headless Chromium (Debian's
//! `chromium`, installed by `scripts/ensure-chromium.sh`) renders the
//! workers and tasks pages showing it, saved to `target/flower-screenshots/`.
//! And Flower on a Redis broker (`redis://`) with a Rust worker there.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestWorker;
use serde_json::{json, Value};
use task_core::control::{host_name, Broadcast};
use task_examples as _;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Flower on a free port, killed when dropped.
struct Flower {
    child: Child,
    base: String,
}

impl Flower {
    fn start() -> Self {
        Self::start_on(&common::broker_url())
    }

    /// Flower on the broker at `broker` (a `redis://` broker too).
    fn start_on(broker: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(common::python())
            .args(["-m", "celery", "-b", broker, "flower"])
            .args([format!("--port={port}"), "--address=127.0.0.1".to_owned()])
            .env("FLOWER_UNAUTHENTICATED_API", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flower starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `method path` (form fields for a POST): the status and the body.
    async fn call(&self, method: &str, path: &str, form: Value) -> (u16, String) {
        common::http(method, &format!("{}{path}", self.base), &form).await
    }

    /// GETs `path` until `found` accepts its JSON body (Flower fills its
    /// state from events and inspect replies as they come).
    async fn wait_for(&self, path: &str, found: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let (status, body) = self.call("GET", path, json!({})).await;
            if status == 200 {
                if let Ok(value) = serde_json::from_str::<Value>(&body) {
                    if found(&value) {
                        return value;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path}: never as expected; last {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn post(&self, path: &str, form: Value) -> Value {
        let (status, body) = self.call("POST", path, form).await;
        assert_eq!(status, 200, "POST {path}: {body}");
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    }
}

impl Drop for Flower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's chromium, installed if missing.
fn chromium() -> String {
    let output = Command::new("bash")
        .arg(common::repo().join("scripts/ensure-chromium.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "chromium cannot be installed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Renders `url` in headless Chromium (its scripts run for 5 s of virtual
/// time): saves a screenshot to `png` and returns the page's DOM.
async fn render(url: &str, png: &std::path::Path) -> String {
    let (url, png) = (url.to_owned(), png.to_owned());
    tokio::task::spawn_blocking(move || {
        let browser = chromium();
        let headless = |extra: &str| {
            let mut command = Command::new(&browser);
            command
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                ])
                .args([
                    "--window-size=1280,900",
                    "--virtual-time-budget=5000",
                    extra,
                    &url,
                ]);
            common::output_within(command, common::CHILD_PROCESS_TIMEOUT)
        };
        let shot = headless(&format!("--screenshot={}", png.display()));
        assert!(
            shot.status.success(),
            "{}",
            String::from_utf8_lossy(&shot.stderr)
        );
        String::from_utf8_lossy(&headless("--dump-dom").stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn flower_shows_and_steers_a_rust_worker() {
    let w = TestWorker::start("flower", 2).await;
    let node = format!("{}@{}", w.queue, host_name());
    let flower = Flower::start();

    // Online, with the inspect replies its worker page needs.
    let workers = flower
        .wait_for("/api/workers?refresh=1", |v| {
            v.get(&node).is_some_and(|n| n.get("stats").is_some())
        })
        .await;
    let worker = &workers[&node];
    assert!(worker["stats"]["total"].is_object(), "{worker}");
    assert_eq!(worker["stats"]["broker"]["transport"], "amqp");
    assert_eq!(worker["active_queues"][0]["name"], w.queue.as_str());
    assert!(worker["registered"]
        .as_array()
        .unwrap()
        .contains(&json!("tasks.add")));
    flower
        .wait_for("/workers?json=1", |v| {
            v["data"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|row| row["hostname"] == node.as_str() && row["status"] == true)
            })
        })
        .await;

    // Its detail page (404 unless its `stats` reply has what the page needs).
    let (status, page) = flower
        .call("GET", &format!("/worker/{node}"), json!({}))
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&w.queue), "the page lists its queue");

    // Flower turns task events on (`enable_events` every 5 s).
    let control = w.app.control();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let conf = control
            .inspect("conf", Broadcast::to([&node], Duration::from_secs(5)))
            .await
            .unwrap();
        if conf
            .first()
            .is_some_and(|(_, c)| c["worker_send_task_events"] == true)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flower never enabled task events"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Its tasks, with state, arguments, result and runtime.
    let add = w
        .app
        .signature("tasks.add")
        .arg(2)
        .arg(3)
        .returning::<i64>();
    let sum = add
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sum.get(TIMEOUT).await.unwrap(), 5);
    let parse = w
        .app
        .signature("tasks.parse_int")
        .arg("x")
        .returning::<i64>();
    let failed = parse
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert!(failed.get(TIMEOUT).await.is_err());
    let info = flower
        .wait_for(&format!("/api/task/info/{}", sum.id()), |t| {
            t["state"] == "SUCCESS"
        })
        .await;
    assert_eq!(
        (&info["name"], &info["args"]),
        (&json!("tasks.add"), &json!("(2, 3)"))
    );
    assert_eq!(
        (&info["result"], &info["worker"]),
        (&json!("5"), &json!(node))
    );
    assert!(info["runtime"].as_f64().is_some(), "{info}");
    let info = flower
        .wait_for(&format!("/api/task/info/{}", failed.id()), |t| {
            t["state"] == "FAILURE"
        })
        .await;
    assert!(
        info["exception"]
            .as_str()
            .unwrap()
            .contains("ParseIntError"),
        "{info}"
    );

    // The pages, rendered: the worker online, its tasks listed.
    let shots = common::repo().join("target/flower-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let page = render(
        &format!("{}/workers", flower.base),
        &shots.join("workers.png"),
    )
    .await;
    assert!(
        page.contains(&node) && page.contains("Online"),
        "workers page: {page}"
    );
    let page = render(&format!("{}/tasks", flower.base), &shots.join("tasks.png")).await;
    assert!(page.contains(sum.id()), "tasks page: {page}");
    for shot in ["workers.png", "tasks.png"] {
        let bytes = std::fs::read(shots.join(shot)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{shot}"
        );
    }

    // Its buttons act on the worker.
    flower
        .post(&format!("/api/worker/pool/grow/{node}"), json!({"n": 1}))
        .await;
    let stats = control
        .inspect("stats", Broadcast::to([&node], TIMEOUT))
        .await
        .unwrap();
    assert_eq!(stats[0].1["pool"]["max-concurrency"], 3);
    // (Flower's rate-limit and time-limit buttons accept only the tasks
    // its own Celery app registers, whoever runs them: `celery control
    // rate_limit` reaches a Rust worker, see tests/remote_control.rs.)
    let (status, refused) = flower
        .call(
            "POST",
            "/api/task/rate-limit/tasks.add",
            json!({"workername": node, "ratelimit": "10/m"}),
        )
        .await;
    assert_eq!(status, 404, "{refused}");
    let revoked_id = uuid::Uuid::new_v4().to_string();
    flower
        .post(
            &format!("/api/task/revoke/{revoked_id}"),
            json!({"terminate": "false"}),
        )
        .await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let known = control
            .inspect("revoked", Broadcast::to([&node], TIMEOUT))
            .await
            .unwrap();
        if known[0].1.as_array().unwrap().contains(&json!(revoked_id)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoke never arrived"
        );
    }
    flower
        .post(&format!("/api/worker/shutdown/{node}"), json!({}))
        .await;
    w.wait_stopped(TIMEOUT).await;
}

/// Flower on a Redis broker: it finds the Rust worker (stats, queues), turns
/// its task events on, lists its tasks with their results from the events
/// over pub/sub, and reads the queue's length from kombu's lists.
#[tokio::test]
async fn flower_shows_a_rust_worker_on_a_redis_broker() {
    let queue = common::unique_queue("flower-redis");
    let app = task_core::App::builder()
        .broker_url(common::redis_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("Redis is running");
    let w = TestWorker::start_on(queue, app, 2, |b| b).await;
    let node = format!("{}@{}", w.queue, host_name());
    let flower = Flower::start_on(&common::redis_url());
    let workers = flower
        .wait_for("/api/workers?refresh=1", |v| {
            v.get(&node).is_some_and(|n| n.get("stats").is_some())
        })
        .await;
    assert_eq!(workers[&node]["stats"]["broker"]["transport"], "redis");
    assert_eq!(workers[&node]["active_queues"][0]["name"], w.queue.as_str());
    // Its broker page reads the queue's length from Redis.
    flower
        .wait_for("/api/queues/length", |v| {
            v["active_queues"].as_array().is_some_and(|queues| {
                queues
                    .iter()
                    .any(|q| q["name"] == w.queue.as_str() && q["messages"] == 0)
            })
        })
        .await;
    // Task events on (Flower asks every 5 s), then a task it lists.
    let control = w.app.control();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let conf = control
            .inspect("conf", Broadcast::to([&node], Duration::from_secs(5)))
            .await
            .unwrap();
        if conf
            .first()
            .is_some_and(|(_, c)| c["worker_send_task_events"] == true)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flower never enabled task events"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let handle = w
        .app
        .signature("tasks.add")
        .arg(20)
        .arg(22)
        .returning::<i64>()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(handle.get(TIMEOUT).await.unwrap(), 42);
    let id = handle.id().to_owned();
    let tasks = flower
        .wait_for("/api/tasks", |v| {
            v.get(&id).is_some_and(|t| t["state"] == "SUCCESS")
        })
        .await;
    assert_eq!(tasks[&id]["result"], "42");
    assert_eq!(tasks[&id]["worker"], node.as_str());
    drop(flower);
    w.stop().await;
}

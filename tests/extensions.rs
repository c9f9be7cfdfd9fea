//! The extension points of the pipeline, on `memory://` with tokio's paused
//! clock: shared state and the context as task parameters, a worker running
//! a chosen subset of the tasks, user stages around each task, worker
//! lifecycle hooks, and per-task settings changed while the worker runs.
//!
//! A task here takes a `State<Config>`, so every worker in this binary
//! either provides it or runs an explicit registry without that task.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use task_core::pipeline::{BoxFuture, Job, Outcome, Stage, Step};
use task_core::{task, App, Error, Registry, State, TaskContext, TaskError};
use task_worker::{Worker, WorkerBuilder, WorkerError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(600);

/// A shared value: what a database pool or a client would be.
struct Config {
    greeting: String,
    calls: AtomicU32,
}

#[task(name = "ext.greet")]
async fn greet(
    config: State<Config>,
    name: String,
    task: TaskContext,
) -> Result<String, TaskError> {
    config.calls.fetch_add(1, Ordering::SeqCst);
    Ok(format!("{} {name} (task {})", config.greeting, task.id()))
}

#[task(name = "ext.tenant")]
async fn tenant(
    task: TaskContext,
) -> Result<(Option<serde_json::Value>, bool, Vec<String>), TaskError> {
    let names = task.headers().map(|(name, _)| name.to_owned()).collect();
    Ok((
        task.header("tenant").cloned(),
        task.embed().is_some(),
        names,
    ))
}

#[task(name = "ext.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[task(name = "ext.sleepy")]
async fn sleepy(seconds: u64) -> Result<u64, TaskError> {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    Ok(seconds)
}

#[task(name = "ext.fails")]
async fn fails() -> Result<(), TaskError> {
    Err(TaskError::new("ValueError", "no"))
}

struct Running {
    app: App,
    queue: String,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
    worker_settings: Arc<task_core::pipeline::TaskSettings>,
}

async fn app(label: &str) -> App {
    App::builder()
        .broker_url(format!("memory://ext-{label}"))
        .set_as_default(false)
        .connect()
        .await
        .unwrap()
}

async fn start(label: &str, configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder) -> Running {
    let app = app(label).await;
    let queue = format!("ext.{label}");
    let worker = configure(Worker::builder().app(app.clone()).queues([queue.clone()]))
        .build()
        .await
        .unwrap();
    Running {
        app,
        queue,
        stop: worker.shutdown_handle(),
        worker_settings: worker.task_settings(),
        handle: tokio::spawn(worker.run()),
    }
}

fn config() -> Config {
    Config {
        greeting: "hello".into(),
        calls: AtomicU32::new(0),
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_receives_the_workers_state_and_its_context_and_callers_pass_neither() {
    let w = start("state", |b| b.state(config())).await;
    let result = greet
        .s("Ada".to_owned())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let id = result.id().to_owned();
    let greeting = result.get(WAIT).await.unwrap();
    assert_eq!(greeting, format!("hello Ada (task {id})"));
    // By keyword too: the state and context are not arguments.
    let by_keyword = w
        .app
        .signature("ext.greet")
        .kwarg("name", "Bob")
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert!(by_keyword
        .get(WAIT)
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .starts_with("hello Bob"));
    assert_eq!(<greet as task_core::Task>::PARAMS, ["name"]);
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_worker_without_a_state_its_tasks_take_refuses_to_start() {
    let app = app("nostate").await;
    let error = Worker::builder()
        .app(app)
        .queues(["ext.nostate"])
        .build()
        .await
        .unwrap_err();
    match error {
        WorkerError::MissingState { task, state } => {
            assert_eq!(task, "ext.greet");
            assert!(state.ends_with("Config"), "{state}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_runs_only_the_tasks_of_its_registry() {
    let w = start("subset", |b| b.registry(Registry::new().with(add))).await;
    let sum = add
        .s(2, 3)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sum.get(WAIT).await.unwrap(), 5);
    // Linked into this binary, but not in the worker's registry: refused
    // as unknown (and no State<Config> was needed to start).
    let other = fails
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let error = other.get(WAIT).await.unwrap_err();
    assert_eq!(error.as_task_failure().unwrap().exc_type, "NotRegistered");
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

/// A user stage: records what it sees before and after each task.
struct Audit(Arc<Mutex<Vec<String>>>);

impl Stage for Audit {
    fn before<'a>(&'a self, job: &'a mut Job<'_>) -> Step<'a> {
        self.0
            .lock()
            .unwrap()
            .push(format!("prerun {}", job.request.name));
        Step::Next
    }

    fn after<'a>(
        &'a self,
        job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        let line = match outcome {
            Outcome::Succeeded { value } => format!("success {} {}", job.request.name, value.get()),
            Outcome::Failed { error } => {
                format!("failure {} {}", job.request.name, error.exc_type())
            }
            other => format!("{} {}", other.name(), job.request.name),
        };
        self.0.lock().unwrap().push(line);
        None
    }
}

#[tokio::test(start_paused = true)]
async fn user_stages_and_lifecycle_hooks_see_each_task_and_the_workers_life() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (ready, stopped) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let w = start("hooks", |b| {
        let (ready, stopped) = (Arc::clone(&ready), Arc::clone(&stopped));
        b.registry(Registry::new().with(add).with(fails))
            .concurrency(1)
            .stage(Audit(Arc::clone(&seen)))
            .on_ready(move |worker| {
                assert_eq!(worker.queues(), ["ext.hooks"]);
                ready.fetch_add(1, Ordering::SeqCst);
            })
            .on_shutdown(move |_| {
                stopped.fetch_add(1, Ordering::SeqCst);
            })
    })
    .await;
    let sum = add
        .s(1, 2)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    sum.get(WAIT).await.unwrap();
    let failed = fails
        .s()
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    failed.get(WAIT).await.unwrap_err();
    assert_eq!(ready.load(Ordering::SeqCst), 1);
    assert_eq!(stopped.load(Ordering::SeqCst), 0);
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "prerun ext.add",
            "success ext.add 3",
            "prerun ext.fails",
            "failure ext.fails ValueError",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_time_limit_set_while_the_worker_runs_applies_to_the_next_runs() {
    let w = start("limits", |b| b.registry(Registry::new().with(sleepy))).await;
    let first = sleepy
        .s(10)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(first.get(WAIT).await.unwrap(), 10, "no declared limit");
    w.worker_settings
        .set_time_limits("ext.sleepy", Some(Duration::from_secs(5)), None);
    let second = sleepy
        .s(10)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let error = second.get(WAIT).await.unwrap_err();
    assert_eq!(
        error.as_task_failure().unwrap().exc_type,
        "TimeLimitExceeded"
    );
    // A limit the message carries still wins.
    let own = sleepy
        .s(10)
        .time_limit(Duration::from_secs(20))
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(own.get(WAIT).await.unwrap(), 10);
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_set_while_the_worker_runs_spaces_the_next_runs() {
    let w = start("rate", |b| {
        b.registry(Registry::new().with(add)).concurrency(4)
    })
    .await;
    w.worker_settings.set_rate_limit(
        "ext.add",
        Some(task_core::RateLimit::new(1, Duration::from_secs(10))),
    );
    let start = tokio::time::Instant::now();
    let mut pending = Vec::new();
    for n in 0..3 {
        pending.push(
            add.s(n, 0)
                .queue(w.queue.clone())
                .apply_async_with(&w.app)
                .await
                .unwrap(),
        );
    }
    for result in pending {
        result.get(WAIT).await.unwrap();
    }
    // Three runs at 1 per 10 s: the last starts 20 s after the first.
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_eager_app_gives_tasks_its_state() {
    let app = App::builder()
        .eager(true)
        .set_as_default(false)
        .state(config())
        .build_with(Arc::new(task_core::broker::memory::MemoryBroker::new()));
    let result = greet
        .s("Eve".to_owned())
        .apply_async_with(&app)
        .await
        .unwrap();
    assert!(result
        .get(Duration::ZERO)
        .await
        .unwrap()
        .starts_with("hello Eve (task "));

    // Without it, the call fails with a typed error naming what is missing.
    let bare = App::builder()
        .eager(true)
        .set_as_default(false)
        .build_with(Arc::new(task_core::broker::memory::MemoryBroker::new()));
    let result = greet
        .s("Eve".to_owned())
        .apply_async_with(&bare)
        .await
        .unwrap();
    let error = result.get(Duration::ZERO).await.unwrap_err();
    let Error::TaskFailed(failure) = &error else {
        panic!("{error}")
    };
    assert_eq!(failure.exc_type, "MissingState");
    assert!(failure.message.contains("Config"), "{}", failure.message);
}

#[tokio::test(start_paused = true)]
async fn a_task_sees_the_headers_its_caller_added_and_the_embed() {
    let w = start("headers", |b| b.registry(Registry::new().with(tenant))).await;
    let result = tenant
        .s()
        .header("tenant", "acme")
        .header("trace", serde_json::json!({"span": 7}))
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let (value, has_embed, names) = result.get(WAIT).await.unwrap();
    assert_eq!(value, Some(serde_json::json!("acme")));
    assert!(has_embed, "the framework sends Celery's embed");
    // Only the caller's headers and the trace context (W3C
    // `traceparent`, which every call carries): none of Celery's protocol
    // headers.
    assert_eq!(names, ["tenant", "trace", "traceparent"]);
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

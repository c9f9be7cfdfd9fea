//! The Redis result backend against the real RabbitMQ and Redis: results
//! read by id from another app, states as they happen (pub/sub), failures
//! with tracebacks, `forget`, `ignore_result`, expiry, extended fields,
//! groups, corrupt values, thousands of waiters on one connection; and, on
//! a private Redis of the test's own, a Redis that goes away while results
//! are stored and awaited.

#[path = "common/certs.rs"]
mod certs;
mod common;
#[path = "common/private_redis.rs"]
mod private_redis;

use std::time::Duration;

use common::TestWorker;
use redis::AsyncCommands;
use task_core::backend::BackendError;
use task_core::{task, App, Error, TaskError, TaskState};
use task_examples::{add, parse_int, sleep};
use task_worker::Worker;
use tokio::sync::Semaphore;

const WAIT: Duration = common::RESULT_TIMEOUT;

/// A client app on the test's queue storing results in `redis_url`.
async fn app_with(queue: &str, redis_url: &str, extended: bool) -> App {
    App::builder()
        .broker_url(common::broker_url())
        .queue(common::test_queue_spec(queue))
        .result_backend(redis_url)
        .result_extended(extended)
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ and Redis are running")
}

/// A worker on its own queue whose app stores results in Redis.
async fn redis_worker(label: &str, redis_url: &str, extended: bool) -> TestWorker {
    redis_worker_with(label, redis_url, extended, |builder| builder).await
}

async fn redis_worker_with(
    label: &str,
    redis_url: &str,
    extended: bool,
    configure: impl FnOnce(task_worker::WorkerBuilder) -> task_worker::WorkerBuilder,
) -> TestWorker {
    let queue = common::unique_queue(label);
    let app = app_with(&queue, redis_url, extended).await;
    TestWorker::start_on(queue, app, 4, configure).await
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running")
}

#[tokio::test]
async fn a_result_is_read_by_id_from_another_app() {
    let url = common::redis_url();
    let w = redis_worker("rb-by-id", &url, false).await;
    let sent = add
        .s(2, 3)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sent.get(WAIT).await.unwrap(), 5);

    // Another client, which never sent the task, reads it by id.
    let reader = app_with(&w.queue, &url, false).await;
    let read = reader.result::<i64>(sent.id()).await.unwrap();
    assert_eq!(read.state(), TaskState::Success, "read before returning");
    assert_eq!(read.get(WAIT).await.unwrap(), 5);
    let meta = reader
        .result_meta(sent.id())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(meta.status, TaskState::Success);
    assert_eq!(meta.task_id, sent.id());
    assert_eq!(meta.result.unwrap().get(), "5");
    assert!(meta.date_done.unwrap().ends_with("+00:00"));
    assert!(meta.name.is_none(), "result_extended is off");

    // Read as the wrong type: a typed error, not a panic.
    let wrong = reader.result::<String>(sent.id()).await.unwrap();
    assert!(matches!(
        wrong.get(WAIT).await,
        Err(Error::DecodeResult { .. })
    ));
    // An id nobody sent is PENDING, and its meta is absent.
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        reader.result::<i64>(&unknown).await.unwrap().state(),
        TaskState::Pending
    );
    assert!(reader.result_meta(&unknown).await.unwrap().is_none());
    reader.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn states_reach_a_reader_as_they_are_stored() {
    let url = common::redis_url();
    let w = redis_worker("rb-states", &url, false).await;
    let sent = sleep
        .s(1.0)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    // A reader that subscribes while the task is queued or running sees
    // STARTED pushed to it, then SUCCESS.
    let reader = app_with(&w.queue, &url, false).await;
    let read = reader.result::<f64>(sent.id()).await.unwrap();
    let state = read
        .wait_for_state(|s| s == TaskState::Started, WAIT)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Started);
    assert_eq!(read.get(WAIT).await.unwrap(), 1.0);
    assert_eq!(reader.pending_results(), 0, "the finished wait is dropped");
    reader.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn failures_are_stored_with_their_traceback() {
    let url = common::redis_url();
    let w = redis_worker("rb-failure", &url, false).await;
    let sent = parse_int
        .s("forty-two".to_owned())
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let error = sent.get(WAIT).await.unwrap_err();
    let failure = error.as_task_failure().expect("a task failure");
    assert_eq!(failure.exc_type, "ParseIntError");
    let meta = w.app.result_meta(sent.id()).await.unwrap().unwrap();
    assert_eq!(meta.status, TaskState::Failure);
    assert!(
        meta.traceback.unwrap().contains("invalid digit"),
        "the traceback is stored"
    );
    let info: serde_json::Value = serde_json::from_str(meta.result.unwrap().get()).unwrap();
    assert_eq!(info["exc_type"], "ParseIntError");
    w.stop().await;
}

#[tokio::test]
async fn forget_deletes_a_stored_result() {
    let url = common::redis_url();
    let w = redis_worker("rb-forget", &url, false).await;
    let sent = add
        .s(1, 1)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    let id = sent.id().to_owned();
    assert_eq!(sent.get(WAIT).await.unwrap(), 2);
    assert!(w.app.result_meta(&id).await.unwrap().is_some());
    sent.forget().await.unwrap();
    assert!(w.app.result_meta(&id).await.unwrap().is_none());
    let mut redis = redis(&url).await;
    let exists: bool = redis
        .exists(format!("celery-task-meta-{id}"))
        .await
        .unwrap();
    assert!(!exists);
    assert_eq!(
        w.app.result::<i64>(&id).await.unwrap().state(),
        TaskState::Pending
    );
    w.stop().await;
}

#[tokio::test]
async fn results_expire_as_configured_and_ignored_results_are_not_stored() {
    let url = common::redis_url();
    let queue = common::unique_queue("rb-expiry");
    let app = App::builder()
        .broker_url(common::broker_url())
        .queue(common::test_queue_spec(&queue))
        .result_backend(&url)
        .result_expires(Some(Duration::from_secs(600)))
        .set_as_default(false)
        .connect()
        .await
        .unwrap();
    // One slot, one message at a time: tasks run in the order sent.
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .concurrency(1)
        .prefetch(1)
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    let ignored = add
        .s(3, 4)
        .queue(queue.clone())
        .ignore_result()
        .apply_async_with(&app)
        .await
        .unwrap();
    let kept = add
        .s(5, 6)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(kept.get(WAIT).await.unwrap(), 11);
    let mut redis = redis(&url).await;
    let ttl: i64 = redis
        .ttl(format!("celery-task-meta-{}", kept.id()))
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "ttl {ttl}");
    // The ignored task ran first and stored nothing.
    let exists: bool = redis
        .exists(format!("celery-task-meta-{}", ignored.id()))
        .await
        .unwrap();
    assert!(!exists, "ignore_result stores nothing");

    stop.cancel();
    running.await.unwrap().unwrap();
    app.broker().delete_queue(&queue).await.unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn extended_results_carry_the_request() {
    let url = common::redis_url();
    let w = redis_worker("rb-extended", &url, true).await;
    let sent = add
        .s(20, 22)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sent.get(WAIT).await.unwrap(), 42);
    let meta = w.app.result_meta(sent.id()).await.unwrap().unwrap();
    assert_eq!(meta.name.as_deref(), Some("tasks.add"));
    assert_eq!(meta.args.unwrap().get(), "[20,22]");
    assert_eq!(meta.kwargs.unwrap().get(), "{}");
    assert_eq!(meta.queue.as_deref(), Some(w.queue.as_str()));
    assert_eq!(meta.retries, Some(0));
    assert!(meta.worker.unwrap().contains('@'));
    w.stop().await;
}

#[tokio::test]
async fn groups_are_saved_restored_and_deleted() {
    let url = common::redis_url();
    let app = app_with("unused", &url, false).await;
    let group_id = uuid::Uuid::new_v4().to_string();
    let members = vec!["a-1".to_owned(), "b-2".to_owned()];
    assert!(app.restore_group(&group_id).await.unwrap().is_none());
    app.save_group(&group_id, &members).await.unwrap();
    assert_eq!(app.restore_group(&group_id).await.unwrap(), Some(members));
    // As Celery's GroupResult.save writes it.
    let mut redis = redis(&url).await;
    let raw: String = redis
        .get(format!("celery-taskset-meta-{group_id}"))
        .await
        .unwrap();
    let saved: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        saved,
        serde_json::json!({"result": [[group_id, null], [[["a-1", null], null], [["b-2", null], null]]]})
    );
    app.forget_group(&group_id).await.unwrap();
    assert!(app.restore_group(&group_id).await.unwrap().is_none());
    app.close().await.unwrap();
}

#[tokio::test]
async fn corrupt_and_foreign_values_are_typed_errors() {
    let url = common::redis_url();
    let app = app_with("unused", &url, false).await;
    let id = uuid::Uuid::new_v4().to_string();
    let key = format!("celery-task-meta-{id}");
    let mut redis = redis(&url).await;
    let _: () = redis.set_ex(&key, "not a result", 60).await.unwrap();
    for error in [
        app.result_meta(&id).await.unwrap_err(),
        app.result::<i64>(&id).await.unwrap_err(),
    ] {
        assert!(
            matches!(error, Error::Backend(BackendError::Corrupt { .. })),
            "{error}"
        );
    }
    let _: () = redis.del(&key).await.unwrap();
    // rpc:// cannot read by id: said so, typed.
    let rpc = common::client(&[]).await;
    assert!(matches!(
        rpc.result_meta(&id).await,
        Err(Error::Backend(BackendError::Unsupported { .. }))
    ));
    rpc.close().await.unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn thousands_of_results_are_awaited_on_one_connection() {
    const N: usize = 2_000;
    let url = common::redis_url();
    let w = redis_worker("rb-many", &url, false).await;
    let mut handles = Vec::with_capacity(N);
    for i in 0..N as i64 {
        handles.push(
            add.s(i, 1)
                .queue(w.queue.clone())
                .apply_async_with(&w.app)
                .await
                .unwrap(),
        );
    }
    let mut sum = 0;
    for handle in &handles {
        sum += handle.get(WAIT).await.unwrap();
    }
    assert_eq!(sum, (1..=N as i64).sum::<i64>());
    assert_eq!(w.app.pending_results(), 0);
    w.stop().await;
}

/// A handle dropped before its result came, and a new one made at once for
/// the same id: the first one's unsubscription must not take the second
/// one's subscription with it (both go through one ordered queue, and a
/// channel is dropped only when nobody waits on it).
#[tokio::test]
async fn a_handle_made_again_for_the_same_id_keeps_its_subscription() {
    let url = common::redis_url();
    let app = app_with("unused", &url, false).await;
    let mut redis = redis(&url).await;
    for round in 0..20_i64 {
        let id = uuid::Uuid::new_v4().to_string();
        let first = app.result::<i64>(&id).await.unwrap();
        drop(first);
        let second = app.result::<i64>(&id).await.unwrap();
        let key = format!("celery-task-meta-{id}");
        let meta = serde_json::json!({
            "status": "SUCCESS", "result": round, "traceback": null, "children": [],
            "date_done": "2026-12-04T00:00:00.000000+00:00", "task_id": id,
        })
        .to_string();
        // Stored and published the way Celery's backend does it.
        let _: () = redis.set_ex(&key, &meta, 60).await.unwrap();
        let _: i64 = redis.publish(&key, &meta).await.unwrap();
        assert_eq!(second.get(WAIT).await.unwrap(), round, "round {round}");
        let _: () = redis.del(&key).await.unwrap();
    }
    assert_eq!(app.pending_results(), 0);
    app.close().await.unwrap();
}

/// One permit per run of `counted`.
static COUNTED_RUNS: Semaphore = Semaphore::const_new(0);

#[task(name = "test.rb.counted")]
async fn counted(x: i64) -> Result<i64, TaskError> {
    COUNTED_RUNS.add_permits(1);
    Ok(x * 2)
}

/// Redis goes away while a worker must store a result and a client awaits
/// it: the worker does not ack the task while its result cannot be stored
/// (past its store deadline the task goes back to the queue and runs
/// again), and once Redis is back the result is stored and reaches the
/// waiting client, whose connection came back by itself.
#[tokio::test]
async fn a_redis_restart_delays_results_but_loses_none() {
    let mut redis = private_redis::PrivateRedis::start().await;
    let url = redis.url();
    let w = redis_worker_with("rb-restart", &url, false, |builder| {
        builder.result_store_deadline(Duration::from_millis(500))
    })
    .await;
    let before = counted
        .s(1)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(before.get(WAIT).await.unwrap(), 2);
    COUNTED_RUNS.acquire().await.unwrap().forget();

    // Subscribed while Redis is up; Redis stops before the task ends.
    let during = sleep
        .s(0.2)
        .queue(w.queue.clone())
        .apply_async_with(&w.app)
        .await
        .unwrap();
    redis.stop().await;
    // Sent by an rpc:// client (RabbitMQ is up): the worker stores its
    // result in Redis, which it cannot do now.
    let rpc = common::client(&[&w.queue]).await;
    let sent = counted
        .s(21)
        .queue(w.queue.clone())
        .apply_async_with(&rpc)
        .await
        .unwrap();
    // Runs twice while Redis is down: never acked while unstored.
    let runs = tokio::time::timeout(WAIT, COUNTED_RUNS.acquire_many(2))
        .await
        .expect("the task was given back to its queue and ran again");
    runs.unwrap().forget();
    redis.restart().await;
    assert_eq!(
        during.get(WAIT).await.unwrap(),
        0.2,
        "awaited across the restart"
    );
    let stored = w.app.result::<i64>(sent.id()).await.unwrap();
    assert_eq!(stored.get(WAIT).await.unwrap(), 42);
    let backend = w.app.result_backend().unwrap();
    assert!(backend.meta(sent.id()).await.unwrap().is_some());
    rpc.close().await.unwrap();
    w.stop().await;
}

/// The chord join as Celery's Redis backend keeps it: a part that runs twice
/// counts once, the part that completes the header gets the one claim with
/// the values in header order, and a finished chord ignores late copies.
#[tokio::test]
async fn chord_parts_count_once_and_one_claim_publishes_the_body() {
    use task_core::backend::{ChordEnd, ChordJoin, ChordPart};
    let url = common::redis_url();
    let app = app_with("unused", &url, false).await;
    let backend = app.result_backend().unwrap().clone();
    let group_id = uuid::Uuid::new_v4().to_string();
    let mut redis = redis(&url).await;
    // The size, as the client that sends a chord writes it.
    let _: () = redis
        .set_ex(format!("celery-taskset-meta-{group_id}.s"), 2, 60)
        .await
        .unwrap();
    let value = |v: i64| serde_json::value::to_raw_value(&v).unwrap();
    let (second, first) = (value(20), value(10));
    let part = |task_id, group_index, result| ChordPart {
        group_id: &group_id,
        task_id,
        group_index: Some(group_index),
        state: TaskState::Success,
        result,
    };
    for _ in 0..2 {
        let join = backend
            .join_chord_part(&part("b", 1, &second))
            .await
            .unwrap();
        assert!(matches!(join, ChordJoin::Pending), "{join:?}");
    }
    let claim = match backend
        .join_chord_part(&part("a", 0, &first))
        .await
        .unwrap()
    {
        ChordJoin::Complete(claim) => claim,
        other => panic!("the last part claims the body: {other:?}"),
    };
    assert!(claim.failed_part().is_none());
    assert_eq!(claim.values().unwrap().get(), "[10,20]", "header order");
    // A copy of a part before the body is out: the claim is taken.
    let join = backend
        .join_chord_part(&part("a", 0, &first))
        .await
        .unwrap();
    assert!(matches!(join, ChordJoin::Pending), "{join:?}");
    backend
        .finish_chord(&claim, ChordEnd::BodySent)
        .await
        .unwrap();
    let join = backend
        .join_chord_part(&part("b", 1, &second))
        .await
        .unwrap();
    assert!(matches!(join, ChordJoin::Finished), "{join:?}");
    let left: i64 = redis
        .exists(format!("celery-taskset-meta-{group_id}.j"))
        .await
        .unwrap();
    assert_eq!(left, 0, "the parts are deleted once the body is out");
    let _: () = redis
        .del(format!("celery-taskset-meta-{group_id}.c"))
        .await
        .unwrap();
    app.close().await.unwrap();
}

/// `rediss://` is TLS: with the CA that signed the server's certificate the
/// backend works end to end; without it the connection is refused, typed;
/// TLS settings with a plaintext `redis://` URL are refused, not ignored.
#[tokio::test]
async fn rediss_urls_speak_tls_verified_by_the_ca_given() {
    use task_core::broker::TlsOptions;
    let ca = certs::Ca::new("task-core redis test CA");
    let files = certs::Files::new("redis");
    let (cert, key) = ca.issue(
        "localhost",
        &["localhost"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let ca_file = files.write("ca.pem", &ca.pem());
    let cert_file = files.write("cert.pem", &cert);
    let key_file = files.write("key.pem", &key);
    let tls_port = private_redis::PrivateRedis::free_port();
    let path = |p: &std::path::Path| p.display().to_string();
    let redis = private_redis::PrivateRedis::start_with(vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path(&cert_file),
        "--tls-key-file".into(),
        path(&key_file),
        "--tls-ca-cert-file".into(),
        path(&ca_file),
        "--tls-auth-clients".into(),
        "no".into(),
    ])
    .await;
    let url = format!("rediss://localhost:{tls_port}/0");
    let tls = TlsOptions::new().ca_file(&ca_file);
    let connect = |url: String, tls: Option<TlsOptions>| async move {
        let builder = App::builder()
            .broker_url(common::broker_url())
            .result_backend(url)
            .set_as_default(false);
        match tls {
            Some(tls) => builder.result_backend_tls(tls),
            None => builder,
        }
        .connect()
        .await
    };

    let app = connect(url.clone(), Some(tls.clone()))
        .await
        .expect("TLS with the CA");
    let queue = common::unique_queue("rb-tls");
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .concurrency(1)
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    let sent = add
        .s(2, 3)
        .queue(queue.clone())
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(sent.get(WAIT).await.unwrap(), 5);
    assert!(app.result_meta(sent.id()).await.unwrap().is_some());
    stop.cancel();
    running.await.unwrap().unwrap();
    app.broker().delete_queue(&queue).await.unwrap();
    app.close().await.unwrap();

    // The server's certificate is not trusted without its CA.
    let untrusted = connect(url, None).await.unwrap_err();
    assert!(
        matches!(untrusted, Error::Backend(BackendError::Connect { .. })),
        "{untrusted}"
    );
    // TLS settings for a plaintext URL: refused, not ignored.
    let plaintext = connect(redis.url(), Some(tls)).await.unwrap_err();
    assert!(
        matches!(plaintext, Error::Backend(BackendError::InvalidUrl { .. })),
        "{plaintext}"
    );
}

//! Chains built in Rust, on the real RabbitMQ, run by a Rust worker: a
//! 3-step chain's value reaches its handle (`rpc://` and the Redis backend),
//! an immutable step ignores the previous result, a failing middle step
//! fails the chain's handle with its error and the steps after it never run.
//! (Chains run by a Python Celery worker, and mixed ones: `interop.rs`.)

mod common;

use std::time::Duration;

use task_core::canvas::{chain, Partial};
use task_core::{App, Error, Signature, TaskState};
use task_examples::{add, delegate_add, delegate_chain, fan_out, hello, mul, parse_int, sum_all};
use task_worker::Worker;

use common::TestWorker;

const WAIT: Duration = common::RESULT_TIMEOUT;

/// `sig` routed to `queue` (chain steps go where their signature says, else
/// to the default queue, as in Celery).
fn on<R>(queue: &str) -> impl Fn(Signature<R>) -> Signature<R> + '_ {
    move |sig| sig.queue(queue.to_owned())
}

#[tokio::test]
async fn a_three_step_chain_gives_its_last_value_over_rpc() {
    let worker = TestWorker::start("chain-rpc", 4).await;
    let q = worker.queue.clone();
    // mul(add(add(2, 3), 10), 2)
    let result = chain(add.s(2, 3).queue(q.clone()))
        .then(add.partial(10).with(on(&q)))
        .then(mul.partial(2).with(on(&q)))
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert_eq!(result.get(WAIT).await.unwrap(), 30);

    // An immutable step runs after the previous one, without its result.
    let greeting = chain(add.s(1, 1).queue(q.clone()))
        .then_immutable(hello.s("chain".to_owned()).queue(q.clone()))
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert_eq!(greeting.get(WAIT).await.unwrap(), "Hello, chain!");
    worker.stop().await;
}

#[tokio::test]
async fn a_failing_middle_step_fails_the_chains_handle() {
    let worker = TestWorker::start("chain-fail", 4).await;
    let q = worker.queue.clone();
    // hello("x") is "Hello, x!", which parse_int refuses: add never runs.
    let last = chain(hello.s("x".to_owned()).queue(q.clone()))
        .then(parse_int.partial().with(on(&q)))
        .then(add.partial(1).with(on(&q)))
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    let error = last.get(WAIT).await.unwrap_err();
    let failure = error.as_task_failure().expect("the chain's failure");
    assert_eq!(failure.exc_type, "ParseIntError", "{error}");
    assert_eq!(last.state(), TaskState::Failure);

    // A first step that fails tells every later step, the last included.
    let never = chain(parse_int.s("nope".to_owned()).queue(q.clone()))
        .then(add.partial(1).with(on(&q)))
        .then(mul.partial(2).with(on(&q)))
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert!(matches!(
        never.get(WAIT).await,
        Err(Error::TaskFailed(failure)) if failure.exc_type == "ParseIntError"
    ));
    worker.stop().await;
}

/// A task that replaces itself (Celery's `self.replace`): its caller gets
/// the replacement's value under the same id, over `rpc://` too (Celery's
/// worker sends the replacement's result to itself there, and the caller
/// waits in vain); in a chain, the steps after it get that value.
#[tokio::test]
async fn a_task_replaced_by_another_answers_its_caller_and_its_chain() {
    let worker = TestWorker::start("replace", 4).await;
    let q = worker.queue.clone();
    let sent = delegate_add
        .s(20, 22)
        .queue(q.clone())
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert_eq!(sent.get(WAIT).await.unwrap(), 42);

    let chained = chain(delegate_add.s(1, 2).queue(q.clone()))
        .then(mul.partial(10).with(on(&q)))
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert_eq!(chained.get(WAIT).await.unwrap(), 30);
    worker.stop().await;
}

/// A task replaced by a chain answers with the chain's last value, one
/// replaced by a group with its members' values as one list (a chord whose
/// body is `celery.accumulate`): joined on RabbitMQ alone under `rpc://`,
/// in Redis with the Redis backend. In a chain, the next step gets that
/// value.
#[tokio::test]
async fn a_task_replaced_by_a_chain_or_a_group_answers_its_caller() {
    let over_rpc = TestWorker::start("replace-canvas", 4).await;
    replaced_by_canvas(&over_rpc).await;
    over_rpc.stop().await;

    let queue = common::unique_queue("replace-canvas-redis");
    let app = App::builder()
        .broker_url(common::broker_url())
        .queue(common::test_queue_spec(&queue))
        .result_backend(common::redis_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ and Redis are running");
    let on_redis = TestWorker::start_on(queue, app, 4, |builder| builder).await;
    replaced_by_canvas(&on_redis).await;
    on_redis.stop().await;
}

async fn replaced_by_canvas(worker: &TestWorker) {
    let q = worker.queue.clone();
    let by_chain = delegate_chain.s(1, 2).queue(q.clone());
    let by_chain = worker.app.send(by_chain).await.unwrap();
    assert_eq!(by_chain.get(WAIT).await.unwrap(), 6);

    let by_group = fan_out.s(10, 3).queue(q.clone());
    let by_group = worker.app.send(by_group).await.unwrap();
    assert_eq!(by_group.get(WAIT).await.unwrap(), vec![11, 12, 13]);

    let chained = chain(fan_out.s(0, 4).queue(q.clone()))
        .then(sum_all.partial().with(on(&q)))
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert_eq!(chained.get(WAIT).await.unwrap(), 10);
}

/// A chain that ends in a group (Celery's `chain(a, group(b, c))`): each
/// member gets the last step's value, the handle is their `GroupResult`;
/// eager mode runs the same inline.
#[tokio::test]
async fn a_chain_ending_in_a_group_gives_every_members_value() {
    let worker = TestWorker::start("chain-group", 4).await;
    let q = worker.queue.clone();
    let members = chain(add.s(1, 1).queue(q.clone()))
        .then(add.partial(1).with(on(&q)))
        .then_group([add.partial(10).with(on(&q)), mul.partial(3).with(on(&q))])
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert_eq!(members.get(WAIT).await.unwrap(), vec![13, 9]);
    worker.stop().await;

    let eager = App::builder()
        .eager(true)
        .set_as_default(false)
        .connect()
        .await
        .unwrap();
    let inline = chain(add.s(2, 2))
        .then_group([add.partial(1), mul.partial(2)])
        .apply_async_with(&eager)
        .await
        .unwrap();
    assert_eq!(inline.get(WAIT).await.unwrap(), vec![5, 8]);
}

/// A callback given its own id answers the caller over `rpc://` (Celery's
/// worker would send its result to its own reply queue).
#[tokio::test]
async fn a_callback_with_its_own_id_answers_the_caller_over_rpc() {
    let worker = TestWorker::start("link-rpc", 4).await;
    let q = worker.queue.clone();
    let callback_id = uuid::Uuid::new_v4().to_string();
    let callback = worker.app.result::<i64>(&callback_id).await.unwrap();
    let times_ten = worker
        .app
        .signature("tasks.mul")
        .arg(10)
        .queue(q.clone())
        .task_id(callback_id.clone());
    let sent = add
        .s(2, 3)
        .queue(q.clone())
        .link(times_ten)
        .apply_async_with(&worker.app)
        .await
        .unwrap();
    assert_eq!(sent.get(WAIT).await.unwrap(), 5);
    assert_eq!(callback.get(WAIT).await.unwrap(), 50);
    worker.stop().await;
}

#[tokio::test]
async fn a_chain_gives_its_last_value_from_the_redis_backend() {
    common::init_logs();
    let queue = common::unique_queue("chain-redis");
    let app = App::builder()
        .broker_url(common::broker_url())
        .queue(common::test_queue_spec(&queue))
        .result_backend(common::redis_url())
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ and Redis are running");
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .concurrency(4)
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());

    // A step known by name: `Partial::new` states what it takes.
    let by_name: Partial<i64, i64> = Partial::new(app.signature("tasks.mul").arg(3).returning());
    let result = chain(add.s(4, 5).queue(queue.clone()))
        .then(by_name.with(on(&queue)))
        .then(add.partial(-7).with(on(&queue)))
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(result.get(WAIT).await.unwrap(), 20);
    // Any process can read it by id from the backend.
    let meta = app.result_meta(result.id()).await.unwrap().unwrap();
    assert_eq!(meta.status, TaskState::Success);

    stop.cancel();
    running.await.unwrap().unwrap();
    app.broker().delete_queue(&queue).await.unwrap();
}

//! Groups and chords built in Rust, on the real RabbitMQ (and Redis for
//! chords and saved groups), run by a Rust worker: a group's results in
//! member order, as they finish, counted; a chord's body receives the
//! header's values in order; a failed part fails the body with
//! `ChordError`; without a result backend chords are joined on RabbitMQ
//! alone, a part counted once however often it reports.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use task_core::canvas::{chord, group, GroupResult, Partial};
use task_core::protocol::chord_join::{self, PartEntry};
use task_core::{App, TaskState};
use task_examples::{add, parse_int, sum_all, Stats};
use task_worker::Worker;

use common::TestWorker;

const WAIT: Duration = common::RESULT_TIMEOUT;

/// A worker on its own queue whose app stores results in `backend`.
async fn backend_worker(label: &str, backend: &str) -> TestWorker {
    let queue = common::unique_queue(label);
    let app = App::builder()
        .broker_url(common::broker_url())
        .queue(common::test_queue_spec(&queue))
        .result_backend(backend)
        .set_as_default(false)
        .connect()
        .await
        .expect("RabbitMQ and Redis are running");
    TestWorker::start_on(queue, app, 8, |builder| builder).await
}

#[tokio::test]
async fn a_group_returns_its_members_results_in_order() {
    let w = backend_worker("grp-rpc", "rpc://").await;
    let q = || w.queue.clone();
    let sums = group((0..20).map(|i| add.s(i, 100).queue(q())))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    assert_eq!(sums.len(), 20);
    let values = sums.get(WAIT).await.unwrap();
    assert_eq!(values, (100..120).collect::<Vec<i64>>());
    assert!(sums.ready());
    assert_eq!(sums.completed_count(), 20);
    assert!(!sums.failed());

    // A failing member: get() names it, join_all() gives each outcome,
    // as_completed() yields every member once.
    let mixed = group([
        parse_int.s("1".to_owned()).queue(q()),
        parse_int.s("two".to_owned()).queue(q()),
        parse_int.s("3".to_owned()).queue(q()),
    ])
    .apply_async_with(&w.app)
    .await
    .unwrap();
    let error = mixed.get(WAIT).await.unwrap_err();
    assert_eq!(error.as_task_failure().unwrap().exc_type, "ParseIntError");
    let outcomes = mixed.join_all(WAIT).await;
    assert_eq!(outcomes[0].as_ref().ok(), Some(&1));
    assert!(outcomes[1].is_err());
    assert_eq!(outcomes[2].as_ref().ok(), Some(&3));
    assert!(mixed.failed());
    assert_eq!(mixed.completed_count(), 2);
    let mut seen: Vec<usize> = mixed
        .as_completed(WAIT)
        .map(|(index, _)| index)
        .collect()
        .await;
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2]);
    w.stop().await;
}

#[tokio::test]
async fn a_saved_group_is_restored_by_id_in_another_app() {
    let url = common::redis_url();
    let w = backend_worker("grp-saved", &url).await;
    let q = || w.queue.clone();
    let sent = group((1..=3).map(|i| add.s(i, i).queue(q())))
        .apply_async_with(&w.app)
        .await
        .unwrap();
    sent.save(&w.app).await.unwrap();
    let reader = App::builder()
        .broker_url(common::broker_url())
        .result_backend(&url)
        .set_as_default(false)
        .connect()
        .await
        .unwrap();
    let restored: GroupResult<i64> = GroupResult::restore(&reader, sent.id())
        .await
        .unwrap()
        .expect("saved");
    assert_eq!(restored.get(WAIT).await.unwrap(), vec![2, 4, 6]);
    // Each member's stored meta names the group.
    let meta = reader
        .result_meta(restored.results()[1].id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.group_id.as_deref(), Some(sent.id()));
    reader.forget_group(sent.id()).await.unwrap();
    reader.close().await.unwrap();
    w.stop().await;
}

#[tokio::test]
async fn a_chord_body_gets_the_header_values_in_order() {
    chord_body_gets_the_header_values(&common::redis_url(), "chord-rs").await;
}

/// The same chords without a result backend: joined on RabbitMQ alone.
#[tokio::test]
async fn a_chord_joined_on_rabbitmq_alone_gets_the_header_values_in_order() {
    chord_body_gets_the_header_values("rpc://", "chord-amqp").await;
}

async fn chord_body_gets_the_header_values(backend: &str, label: &str) {
    let w = backend_worker(label, backend).await;
    let q = || w.queue.clone();
    // tasks.stats(values: Vec<f64>): the header's values come first.
    let body = Partial::new(
        w.app
            .signature("tasks.stats")
            .queue(q())
            .returning::<Stats>(),
    );
    let header = group((1..=5).map(|i| add.s(i, i).queue(q())));
    let stats = chord(header, body)
        .apply_async_with(&w.app)
        .await
        .unwrap()
        .get(WAIT)
        .await
        .unwrap();
    assert_eq!(
        (stats.count, stats.mean, stats.max),
        (5, Some(6.0), Some(10.0))
    );

    // A failed part: the body is FAILURE ChordError, naming the part.
    let body = Partial::new(
        w.app
            .signature("tasks.stats")
            .queue(q())
            .returning::<Stats>(),
    );
    let header = group([
        parse_int.s("1".to_owned()).queue(q()),
        parse_int.s("x".to_owned()).queue(q()),
    ]);
    let failed = chord(header, body).apply_async_with(&w.app).await.unwrap();
    let error = failed.get(WAIT).await.unwrap_err();
    let failure = error.as_task_failure().expect("a task failure");
    assert_eq!(failure.exc_type, "ChordError");
    assert!(
        failure.message.contains("raised ParseIntError"),
        "{failure}"
    );
    assert_eq!(failed.state(), TaskState::Failure);
    w.stop().await;
}

/// A chord inside a chain (Celery's `a | group(..) | b | c`), built in Rust
/// and run by a Rust worker: the header parts get the previous result, the
/// body their values in order, and the chain goes on from the body; a part
/// that fails fails the chain's handle with `ChordError`.
#[tokio::test]
async fn a_chord_step_inside_a_chain_feeds_the_steps_after_it() {
    chord_step_feeds_the_steps_after_it(&common::redis_url(), "chain-chord-rs").await;
}

/// The same chains without a result backend: the worker that reaches the
/// chord starts its join on RabbitMQ.
#[tokio::test]
async fn a_chord_step_joined_on_rabbitmq_alone_feeds_the_steps_after_it() {
    chord_step_feeds_the_steps_after_it("rpc://", "chain-chord-amqp").await;
}

async fn chord_step_feeds_the_steps_after_it(backend: &str, label: &str) {
    use task_core::canvas::chain;
    let w = backend_worker(label, backend).await;
    let q = || w.queue.clone();
    let on_queue = |p: Partial<i64, i64>| p.with(|s| s.queue(q()));
    let steps = chain(add.s(1, 1).queue(q()))
        .then_chord(
            [on_queue(add.partial(10)), on_queue(add.partial(20))],
            sum_all.partial().with(|s| s.queue(q())),
        )
        .then(on_queue(add.partial(100)));
    let total = steps.apply_async_with(&w.app).await.unwrap();
    assert_eq!(total.get(WAIT).await.unwrap(), 134);

    // The chord as the last step: the chain's handle is the body's.
    let ends_in_chord = chain(add.s(2, 2).queue(q())).then_chord(
        (1..=4).map(|i| on_queue(add.partial(i))),
        sum_all.partial().with(|s| s.queue(q())),
    );
    let sum = ends_in_chord.apply_async_with(&w.app).await.unwrap();
    assert_eq!(sum.get(WAIT).await.unwrap(), 4 * 4 + 10);

    // A part fails: the body, and the step after it, never run; the
    // chain's handle hears of it.
    let failing = chain(parse_int.s("7".to_owned()).queue(q()))
        .then_chord(
            [
                on_queue(add.partial(1)),
                on_queue(Partial::new(
                    w.app
                        .signature("tasks.parse_int")
                        .queue(q())
                        .returning::<i64>(),
                )),
            ],
            sum_all.partial().with(|s| s.queue(q())),
        )
        .then(on_queue(add.partial(100)));
    let failed = failing.apply_async_with(&w.app).await.unwrap();
    let error = failed.get(WAIT).await.unwrap_err();
    let failure = error.as_task_failure().expect("a task failure");
    assert_eq!(failure.exc_type, "ChordError", "{failure}");
    w.stop().await;
}

/// On RabbitMQ alone, a part whose result reaches the join twice (a part
/// redelivered and run again) is counted once: the body runs when every
/// place of the header is filled, not when enough entries came, and the
/// join queue is deleted once the body is out.
#[tokio::test]
async fn a_part_that_reaches_the_rabbitmq_join_twice_is_counted_once() {
    let queue = common::unique_queue("chord-amqp-twice");
    let app = common::client(&[&queue]).await;
    let header = group((1..=4).map(|i| add.s(i, i).queue(queue.clone())));
    let join_queue = chord_join::join_queue_name(header.id());
    let body = sum_all.partial().with(|s| s.queue(queue.clone()));
    // No worker yet: the parts wait in their queue.
    let sum = chord(header, body).apply_async_with(&app).await.unwrap();
    // A copy of the first part's result (value 1000) comes first.
    let copy = PartEntry {
        task_id: "an-earlier-run-of-part-0".into(),
        group_index: Some(0),
        state: TaskState::Success,
        result: serde_json::value::to_raw_value(&1000).unwrap(),
    };
    app.broker()
        .publish(
            "",
            &join_queue,
            &chord_join::entries_message(&[copy]).unwrap(),
        )
        .await
        .unwrap();
    let worker = Worker::builder()
        .app(app.clone())
        .queues([queue.clone()])
        .build()
        .await
        .unwrap();
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    // Four places, five entries: place 0 once (the first entry for it).
    assert_eq!(sum.get(WAIT).await.unwrap(), 1000 + 4 + 6 + 8);
    common::wait_until_deleted(&app, &join_queue).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    app.broker().delete_queue(&queue).await.unwrap();
    app.close().await.unwrap();
}

#[tokio::test]
async fn eager_mode_runs_groups_and_chords_inline() {
    let app = App::builder()
        .eager(true)
        .set_as_default(false)
        .connect()
        .await
        .unwrap();
    let sums = group((1..=3).map(|i| add.s(i, i)))
        .apply_async_with(&app)
        .await
        .unwrap();
    assert!(sums.ready(), "ran inline");
    assert_eq!(sums.get(WAIT).await.unwrap(), vec![2, 4, 6]);

    let body = || Partial::new(app.signature("tasks.stats").returning::<Stats>());
    let stats = chord(group((1..=3).map(|i| add.s(i, i))), body())
        .apply_async_with(&app)
        .await
        .unwrap()
        .get(WAIT)
        .await
        .unwrap();
    assert_eq!((stats.count, stats.max), (3, Some(6.0)));
    // A task of this crate as the body: its first parameter checked at compile time.
    let total = chord(group((1..=3).map(|i| add.s(i, i))), sum_all.partial())
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(total.get(WAIT).await.unwrap(), 12);

    let header = group([parse_int.s("1".to_owned()), parse_int.s("x".to_owned())]);
    let failed = chord(header, body()).apply_async_with(&app).await.unwrap();
    let error = failed.get(WAIT).await.unwrap_err();
    let failure = error.as_task_failure().expect("a task failure");
    assert_eq!(failure.exc_type, "ChordError");
    assert!(
        failure.message.contains("raised ParseIntError"),
        "{failure}"
    );

    // A chord inside a chain runs inline too, and the chain goes on from
    // its body; a failed part fails the steps after the body.
    use task_core::canvas::chain;
    let steps = chain(add.s(1, 1))
        .then_chord([add.partial(10), add.partial(20)], sum_all.partial())
        .then(add.partial(100));
    let total = steps.apply_async_with(&app).await.unwrap();
    assert!(total.ready(), "ran inline");
    assert_eq!(total.get(WAIT).await.unwrap(), 134);
    let failing = chain(parse_int.s("7".to_owned()))
        .then_chord(
            [
                add.partial(1),
                Partial::new(app.signature("tasks.parse_int").returning::<i64>()),
            ],
            sum_all.partial(),
        )
        .then(add.partial(100));
    let failed = failing.apply_async_with(&app).await.unwrap();
    let error = failed.get(WAIT).await.unwrap_err();
    let failure = error.as_task_failure().expect("a task failure");
    assert_eq!(failure.exc_type, "ChordError", "{failure}");
}

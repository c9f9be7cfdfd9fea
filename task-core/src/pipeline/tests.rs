//! The pipeline's steps and stage protocol, without a broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::*;
use crate::protocol::result_message::ResultBody;
use crate::protocol::task_message::{encode_task, TaskCall};
use crate::{task, TaskState};

#[task(name = "test.pipeline.add", track_started)]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[task(name = "test.pipeline.flaky", autoretry_for = ["Flaky"], max_retries = 1, retry_backoff = 4, retry_jitter = false)]
async fn flaky() -> Result<i64, TaskError> {
    Err(TaskError::new("Flaky", "again"))
}

/// Records every result it is handed.
#[derive(Default)]
struct Recorded(Mutex<Vec<(String, TaskState)>>);

#[async_trait::async_trait]
impl ResultSink for Recorded {
    async fn publish_result(&self, record: &ResultRecord<'_>) -> Result<(), BackendError> {
        let body = ResultBody::decode(&record.result.body).expect("results decode");
        let reply_to = record.reply_to.unwrap_or("-");
        self.0
            .lock()
            .unwrap()
            .push((format!("{reply_to}/{}", body.task_id), body.status));
        Ok(())
    }
}

impl Recorded {
    fn take(&self) -> Vec<(String, TaskState)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// Records the order in which its `before` and `after` run; stops the job
/// when told to.
struct Probe {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    stop: bool,
}

impl Stage for Probe {
    fn before<'a>(&'a self, _job: &'a mut Job<'_>) -> Step<'a> {
        self.log
            .lock()
            .unwrap()
            .push(format!("before {}", self.name));
        if self.stop {
            return Step::Stop(Outcome::Ignored {
                reason: "probe".into(),
            });
        }
        Step::Next
    }

    fn after<'a>(
        &'a self,
        _job: &'a Job<'_>,
        outcome: &'a mut Outcome,
    ) -> Option<BoxFuture<'a, ()>> {
        let line = format!("after {} {}", self.name, outcome.name());
        Some(Box::pin(async move {
            self.log.lock().unwrap().push(line);
        }))
    }
}

fn message(name: &str, args: &[i64], expires: Option<chrono::DateTime<chrono::Utc>>) -> Message {
    let args: Vec<Box<RawValue>> = args
        .iter()
        .map(|n| serde_json::value::to_raw_value(n).unwrap())
        .collect();
    encode_task(&TaskCall {
        id: "t-1",
        name,
        args: &args,
        kwargs: &[],
        reply_to: Some("replies"),
        eta: None,
        expires,
        priority: None,
        time_limit: None,
        soft_time_limit: None,
        ignore_result: false,
        retries: 0,
        root_id: None,
        parent_id: None,
    })
    .unwrap()
}

use serde_json::value::RawValue;

fn registry() -> Registry {
    Registry::new().with(add).with(flaky)
}

async fn process(pipeline: &Pipeline, message: &Message, results: &Recorded) -> Outcome {
    let input = Input {
        message,
        queue: "q",
        delivery: DeliveryInfo::default(),
        acker: None,
        slot: None,
        results,
        states: &Arc::default(),
    };
    pipeline.process(input).await.outcome
}

#[tokio::test]
async fn a_call_runs_to_its_value_with_started_reported_first() {
    let pipeline = Pipeline::builder(registry()).build();
    let results = Recorded::default();
    let outcome = process(
        &pipeline,
        &message("test.pipeline.add", &[2, 3], None),
        &results,
    )
    .await;
    match outcome {
        Outcome::Succeeded { value } => assert_eq!(value.get(), "5"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        results.take(),
        [("replies/t-1".to_owned(), TaskState::Started)]
    );
}

#[tokio::test]
async fn stages_run_in_order_and_see_the_outcome_in_reverse() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let probe = |name, stop| Probe {
        name,
        log: Arc::clone(&log),
        stop,
    };
    let pipeline = Pipeline::builder(registry())
        .stage(probe("a", false))
        .stage(probe("b", false))
        .build();
    let results = Recorded::default();
    process(
        &pipeline,
        &message("test.pipeline.add", &[1, 1], None),
        &results,
    )
    .await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            "before a",
            "before b",
            "after b succeeded",
            "after a succeeded"
        ]
    );

    // A stage that stops the job: later stages and the task never run.
    log.lock().unwrap().clear();
    results.take();
    let pipeline = Pipeline::builder(registry())
        .stage(probe("a", false))
        .stage(probe("stop", true))
        .stage(probe("c", false))
        .build();
    let outcome = process(
        &pipeline,
        &message("test.pipeline.add", &[1, 1], None),
        &results,
    )
    .await;
    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    assert_eq!(
        *log.lock().unwrap(),
        [
            "before a",
            "before stop",
            "after stop ignored",
            "after a ignored"
        ]
    );
    assert!(results.take().is_empty(), "the task did not start");
}

#[tokio::test]
async fn what_cannot_run_is_rejected_with_its_caller_to_tell() {
    let results = Recorded::default();
    let pipeline = Pipeline::builder(registry()).max_message_size(1000).build();

    let unknown = process(
        &pipeline,
        &message("test.pipeline.nobody", &[], None),
        &results,
    )
    .await;
    let Outcome::Rejected(rejection) = unknown else {
        panic!("{unknown:?}")
    };
    assert!(
        rejection.reason.starts_with("NotRegistered"),
        "{}",
        rejection.reason
    );
    assert_eq!(rejection.notify, [("t-1".to_owned(), "replies".to_owned())]);

    let mut large = message("test.pipeline.add", &[1, 2], None);
    large.body.resize(1001, b' ');
    let Outcome::Rejected(rejection) = process(&pipeline, &large, &results).await else {
        panic!("not rejected")
    };
    assert!(
        rejection.reason.starts_with("MessageTooLarge"),
        "{}",
        rejection.reason
    );
    assert_eq!(rejection.failure.exc_type(), "MessageTooLarge");

    let mut malformed = message("test.pipeline.add", &[1, 2], None);
    malformed.body = b"[1, 2".to_vec();
    let Outcome::Rejected(rejection) = process(&pipeline, &malformed, &results).await else {
        panic!("not rejected")
    };
    assert_eq!(rejection.failure.exc_type(), "DecodeError");
    assert_eq!(
        rejection.notify.len(),
        1,
        "its id and reply queue are in the headers"
    );
    assert!(
        results.take().is_empty(),
        "settlement tells the callers, not the pipeline"
    );
}

#[tokio::test]
async fn the_retry_decision_follows_the_policy() {
    let results = Recorded::default();
    let pipeline = Pipeline::builder(registry()).build();
    let first = process(
        &pipeline,
        &message("test.pipeline.flaky", &[], None),
        &results,
    )
    .await;
    match first {
        Outcome::Retry { error, delay } => {
            assert_eq!(error.exc_type(), "Flaky");
            assert_eq!(delay, Duration::from_secs(4), "backoff 4 s, no jitter");
        }
        other => panic!("{other:?}"),
    }
    // Retried once already: max_retries = 1 makes it a failure.
    let again = crate::protocol::task_message::retried_copy(
        &message("test.pipeline.flaky", &[], None),
        1,
        chrono::Utc::now(),
    );
    let second = process(&pipeline, &again, &results).await;
    assert!(matches!(second, Outcome::Failed { .. }), "{second:?}");
}

#[tokio::test]
async fn an_expired_task_is_revoked_unrun() {
    let results = Recorded::default();
    let pipeline = Pipeline::builder(registry()).stage(Expiry).build();
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let outcome = process(
        &pipeline,
        &message("test.pipeline.add", &[1, 1], Some(past)),
        &results,
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Revoked { reason } if reason == "expired"),
        "{outcome:?}"
    );
    assert!(results.take().is_empty(), "not started");
    let message = outcome.caller_result("t-1").expect("REVOKED is told");
    assert_eq!(
        ResultBody::decode(&message.body).unwrap().status,
        TaskState::Revoked
    );
}

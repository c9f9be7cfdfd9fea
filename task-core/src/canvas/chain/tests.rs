//! The wire shape of a chain built in Rust, against Celery 5.7's
//! (CELERY_OPERATIONS.md §1.1), the steps a worker publishes from it, the
//! dict forms, and chains run by an eager app.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::protocol::canvas::Embed;
use crate::protocol::task_message::{decode_task, TaskRequest};
use crate::signature::EncodedCall;
use crate::{task, TaskError, TaskState};

#[task(name = "test.chain.add")]
async fn add(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x + y)
}

#[task(name = "test.chain.mul")]
async fn mul(x: i64, y: i64) -> Result<i64, TaskError> {
    Ok(x * y)
}

#[task(name = "test.chain.fail")]
async fn fail(x: i64) -> Result<i64, TaskError> {
    Err(TaskError::new("ValueError", format!("no {x}")))
}

#[task(name = "test.chain.show")]
async fn show(label: String) -> Result<String, TaskError> {
    Ok(format!("[{label}]"))
}

/// §1.1's chain: `add.s(1,2) | mul.s(10) | add.s(5)`.
fn wire_chain() -> Chain<i64> {
    chain(add.s(1, 2))
        .then(mul.partial(10))
        .then(add.partial(5))
}

fn body(call: &EncodedCall) -> Value {
    serde_json::from_slice(&call.message.body).unwrap()
}

fn request(message: &crate::broker::Message) -> TaskRequest {
    decode_task(message).unwrap()
}

#[test]
fn the_first_message_carries_the_rest_reversed_and_frozen() {
    let (first, last_id) = freeze(wire_chain().steps, "client-oid").unwrap();
    let call = first.encode_call(Some("client-oid")).unwrap();
    let headers = call.message.properties.headers.to_json();
    assert_eq!(headers["task"], "test.chain.add");
    assert_eq!(headers["id"], call.task_id.as_str());
    // A top-level call: its own root, no parent, no group.
    assert_eq!(headers["root_id"], call.task_id.as_str());
    assert_eq!(headers["parent_id"], Value::Null);
    assert_eq!(headers["group"], Value::Null);
    assert_eq!(
        call.message.properties.reply_to.as_deref(),
        Some("client-oid")
    );

    let body = body(&call);
    assert_eq!(body[0], json!([1, 2]));
    assert_eq!(body[1], json!({}));
    let embed = &body[2];
    assert_eq!(embed["callbacks"], Value::Null);
    assert_eq!(embed["errbacks"], Value::Null);
    assert_eq!(embed["chord"], Value::Null);
    let steps = embed["chain"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    // Reversed: the next step is the last element.
    let (last, next) = (&steps[0], &steps[1]);
    assert_eq!(next["task"], "test.chain.mul");
    assert_eq!(next["args"], json!([10]));
    assert_eq!(last["task"], "test.chain.add");
    assert_eq!(last["args"], json!([5]));
    for step in steps {
        assert_eq!(step["kwargs"], json!({}));
        assert_eq!(step["subtask_type"], Value::Null);
        assert_eq!(step["immutable"], false);
        assert_eq!(step["options"]["reply_to"], "client-oid");
        assert!(step["options"]["task_id"].as_str().is_some());
    }
    // The handle waits on the last step's frozen id; ids are distinct.
    assert_eq!(last["options"]["task_id"], last_id.as_str());
    let next_id = next["options"]["task_id"].as_str().unwrap();
    assert_ne!(next_id, last_id);
    assert_ne!(next_id, call.task_id);
}

#[test]
fn a_worker_publishes_each_step_with_the_previous_result_and_lineage() {
    let (first, last_id) = freeze(wire_chain().steps, "client-oid").unwrap();
    let call = first.encode_call(Some("client-oid")).unwrap();
    let first_request = request(&call.message);
    let embed = Embed::of(&first_request).unwrap();
    assert_eq!(embed.unsupported(false, false), None);
    let three = serde_json::value::to_raw_value(&3).unwrap();
    let follow = embed.after_success(&first_request, &three).unwrap();
    assert_eq!(follow.len(), 1);
    let mul_request = request(&follow[0].message);
    assert_eq!(mul_request.name, "test.chain.mul");
    assert_eq!(mul_request.reply_to.as_deref(), Some("client-oid"));
    let mul_body: Value = serde_json::from_slice(&follow[0].message.body).unwrap();
    assert_eq!(mul_body[0], json!([3, 10]));
    let mul_headers = follow[0].message.properties.headers.to_json();
    assert_eq!(mul_headers["root_id"], call.task_id.as_str());
    assert_eq!(mul_headers["parent_id"], call.task_id.as_str());

    let thirty = serde_json::value::to_raw_value(&30).unwrap();
    let follow = Embed::of(&mul_request)
        .unwrap()
        .after_success(&mul_request, &thirty)
        .unwrap();
    let add_request = request(&follow[0].message);
    assert_eq!(add_request.id, last_id);
    let add_body: Value = serde_json::from_slice(&follow[0].message.body).unwrap();
    assert_eq!(add_body[0], json!([30, 5]));
    // The final step carries `"chain": []`, as Celery's worker sends it.
    assert_eq!(add_body[2]["chain"], json!([]));
    let add_headers = follow[0].message.properties.headers.to_json();
    assert_eq!(add_headers["root_id"], call.task_id.as_str());
    assert_eq!(add_headers["parent_id"], mul_request.id.as_str());
}

#[test]
fn immutable_steps_and_step_options_travel_in_the_frozen_dicts() {
    let steps = chain(add.s(1, 2))
        .then(mul.partial(10).with(|s| {
            s.queue("math")
                .countdown(Duration::from_millis(1500))
                .priority(3)
                .task_id("mul-id")
        }))
        .then_immutable(show.s("done".to_owned()));
    let _: &Chain<String> = &steps;
    let (first, last_id) = freeze(steps.steps, "r").unwrap();
    let embed = first.options.chain.clone();
    let (show_step, mul_step) = (&embed[0], &embed[1]);
    assert_eq!(show_step["immutable"], true);
    assert_eq!(show_step["args"], json!(["done"]));
    assert_eq!(show_step["options"]["task_id"], last_id.as_str());
    assert_eq!(mul_step["options"]["task_id"], "mul-id");
    assert_eq!(mul_step["options"]["queue"], "math");
    assert_eq!(mul_step["options"]["countdown"], 1.5);
    assert_eq!(mul_step["options"]["priority"], 3);
}

#[test]
fn a_chain_in_celerys_dict_form_and_back() {
    let dict = wire_chain().to_dict();
    assert_eq!(dict["task"], "celery.chain");
    assert_eq!(dict["subtask_type"], "chain");
    assert_eq!(dict["args"], json!([]));
    assert_eq!(dict["immutable"], false);
    let tasks = dict["kwargs"]["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["test.chain.add", "test.chain.mul", "test.chain.add"]
    );
    assert_eq!(tasks[0]["args"], json!([1, 2]));
    assert_eq!(tasks[1]["args"], json!([10]));

    let back = Chain::from_dict(&dict).unwrap().returning::<i64>();
    assert_eq!(back.len(), 3);
    assert_eq!(back.to_dict(), dict);

    // As Python's `chain(add.s(1, 2), mul.si(3)).__json__()` shapes it.
    let python = json!({
        "task": "celery.chain", "args": [], "options": {}, "subtask_type": "chain",
        "immutable": false, "chord_size": null,
        "kwargs": {"tasks": [
            {"task": "py.add", "args": [1, 2], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false, "chord_size": null},
            {"task": "py.mul", "args": [3], "kwargs": {}, "options": {"queue": "q"}, "subtask_type": null, "immutable": true, "chord_size": null},
        ]},
    });
    let read = Chain::from_dict(&python).unwrap();
    let ChainStep::Task(second) = &read.steps()[1] else {
        panic!("a task step: {:?}", read.steps()[1]);
    };
    assert_eq!(second.name(), "py.mul");
    assert!(second.options().immutable);
    assert_eq!(second.options().queue.as_deref(), Some("q"));

    let refused = Chain::from_dict(&tasks[0]).unwrap_err();
    assert!(refused.reason().contains("not a chain"), "{refused}");
    let nested = json!({"task": "celery.chain", "subtask_type": "chain",
        "kwargs": {"tasks": [{"task": "celery.group", "subtask_type": "group"}]}});
    assert!(Chain::from_dict(&nested).is_err());
}

#[test]
fn a_plain_signature_from_its_dict() {
    let sig = Signature::<i64>::new("tasks.add")
        .arg(2)
        .kwarg("y", 3)
        .queue("math")
        .task_id("the-id")
        .priority(7)
        .countdown(Duration::from_secs(2))
        .expires_in(Duration::from_secs(60))
        .time_limit(Duration::from_secs(30))
        .soft_time_limit(Duration::from_secs(20))
        .link(Signature::<i64>::new("tasks.mul").arg(10))
        .immutable();
    let dict = sig.to_dict();
    let back = Signature::from_dict(&dict).unwrap().returning::<i64>();
    assert_eq!(back.to_dict(), dict);
    assert_eq!(back.options(), sig.options());
    let text = serde_json::to_string(&dict).unwrap();
    assert_eq!(Signature::from_json(&text).unwrap().to_dict(), dict);

    let at = json!({"task": "t", "options": {"expires": "2030-01-02T03:04:05+00:00", "eta": "2030-01-01T00:00:00Z"}});
    let read = Signature::from_dict(&at).unwrap();
    assert!(matches!(read.options().expires, Some(crate::Expiry::At(_))));
    assert!(read.options().eta.is_some());

    for (bad, why) in [
        (json!([1]), "JSON object"),
        (json!({"args": []}), "`task`"),
        (json!({"task": "t", "args": 1}), "`args`"),
        (
            json!({"task": "t", "options": {"countdown": "soon"}}),
            "`countdown`",
        ),
        (
            json!({"task": "t", "options": {"priority": 300}}),
            "`priority`",
        ),
        (
            json!({"task": "celery.chain", "subtask_type": "chain"}),
            "a chain",
        ),
    ] {
        let error = Signature::from_dict(&bad).unwrap_err();
        assert!(error.reason().contains(why), "{bad}: {error}");
    }
}

#[test]
fn an_argument_that_does_not_encode_fails_the_send() {
    struct NotJson;
    impl serde::Serialize for NotJson {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("not JSON"))
        }
    }
    let steps = chain(add.s(1, 2)).then(Partial::<i64, i64>::new(
        Signature::new("test.chain.add").arg(NotJson),
    ));
    match freeze(steps.steps, "r") {
        Err(Error::EncodeArguments { task, reason }) => {
            assert_eq!(task, "test.chain.add");
            assert!(reason.contains("not JSON"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

fn eager_app() -> App {
    App::builder()
        .eager(true)
        .set_as_default(false)
        .build_with(std::sync::Arc::new(
            crate::broker::memory::MemoryBroker::new(),
        ))
}

#[tokio::test]
async fn an_eager_app_runs_the_steps_inline() {
    let app = eager_app();
    let result = chain(add.s(2, 3))
        .then(add.partial(10))
        .then(mul.partial(2))
        .apply_async_with(&app)
        .await
        .unwrap();
    assert!(result.ready());
    assert_eq!(result.get(Duration::ZERO).await.unwrap(), 30);

    let done = chain(add.s(2, 3))
        .then_immutable(show.s("fresh".to_owned()))
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(done.get(Duration::ZERO).await.unwrap(), "[fresh]");

    let single = chain(add.s(1, 1)).apply_async_with(&app).await.unwrap();
    assert_eq!(single.get(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(app.pending_results(), 0);
}

#[tokio::test]
async fn a_failed_step_fails_the_chain_and_the_rest_never_runs() {
    let app = eager_app();
    let result = chain(add.s(2, 3))
        .then(fail.partial())
        .then(mul.partial(2))
        .apply_async_with(&app)
        .await
        .unwrap();
    assert_eq!(result.state(), TaskState::Failure);
    let error = result.get(Duration::ZERO).await.unwrap_err();
    let failure = error.as_task_failure().unwrap();
    assert_eq!(
        (failure.exc_type.as_str(), failure.message.as_str()),
        ("ValueError", "no 5")
    );
}

#[test]
fn a_worker_publishes_a_step_with_its_own_timing() {
    let steps = chain(add.s(1, 2)).then(mul.partial(10).with(|s| {
        s.countdown(Duration::from_secs(90))
            .expires_in(Duration::from_secs(600))
            .time_limit(Duration::from_secs(30))
            .soft_time_limit(Duration::from_secs(20))
    }));
    let (first, _) = freeze(steps.steps, "r").unwrap();
    let call = first.encode_call(Some("r")).unwrap();
    let first_request = request(&call.message);
    let three = serde_json::value::to_raw_value(&3).unwrap();
    let before = crate::clock::now();
    let follow = Embed::of(&first_request)
        .unwrap()
        .after_success(&first_request, &three)
        .unwrap();
    let step = request(&follow[0].message);
    let eta = step.eta.expect("the countdown became an eta");
    let waits = (eta - before).num_seconds();
    assert!((89..=91).contains(&waits), "{waits}");
    let expires = step.expires.expect("expires");
    assert!((599..=601).contains(&(expires - before).num_seconds()));
    let headers = follow[0].message.properties.headers.to_json();
    assert_eq!(headers["timelimit"], json!([30.0, 20.0]));
}

#[task(name = "test.chain.sum_all")]
async fn sum_all(values: Vec<i64>) -> Result<i64, TaskError> {
    Ok(values.iter().sum())
}

/// `chain(add(1, 1)).then_chord([add(10), add(20)], sum_all).then(add(100))`
/// goes out as Celery sends `add.s(1, 1) | group(..) | sum_all.s() |
/// add.s(100)`: one `celery.chord` element whose body carries the step after
/// it; a worker turns it into the header parts, each carrying the body.
#[test]
fn a_chord_step_travels_as_celerys_chord_element() {
    let steps = chain(add.s(1, 1))
        .then_chord([add.partial(10), add.partial(20)], sum_all.partial())
        .then(add.partial(100));
    assert_eq!(steps.len(), 3);
    let dict = steps.to_dict();
    let back = Chain::from_dict(&dict).unwrap();
    assert_eq!(back.to_dict(), dict);

    let (first, last_id) = freeze(steps.steps, "client-oid").unwrap();
    // As Celery 5.7's client sends it: the chord, then the step after it,
    // in the reversed list (the next step last).
    let [after, chord] = first.options.chain.as_slice() else {
        panic!("two elements: {:?}", first.options.chain);
    };
    assert_eq!(chord["task"], "celery.chord");
    assert_eq!(chord["subtask_type"], "chord");
    let group_id = chord["options"]["task_id"].as_str().unwrap();
    let header = &chord["kwargs"]["header"];
    assert_eq!(header["subtask_type"], "group");
    assert_eq!(header["options"]["task_id"], group_id);
    let members = header["kwargs"]["tasks"].as_array().unwrap();
    assert_eq!(members[1]["args"], json!([20]));
    assert_eq!(members[1]["options"]["group_index"], 1);
    let body = &chord["kwargs"]["body"];
    assert_eq!(body["task"], "test.chain.sum_all");
    assert_eq!(body["options"]["group_id"], group_id);
    assert_eq!(body["options"]["reply_to"], "client-oid");
    assert_eq!(after["args"], json!([100]));
    assert_eq!(after["options"]["task_id"], last_id.as_str());

    let call = first.encode_call(Some("client-oid")).unwrap();
    let first_request = request(&call.message);
    let embed = Embed::of(&first_request).unwrap();
    assert!(
        embed.unsupported(false, false).is_some(),
        "needs a worker that joins chords"
    );
    assert_eq!(embed.unsupported(false, true), None);
    let two = serde_json::value::to_raw_value(&2).unwrap();
    let parts = embed.after_success(&first_request, &two).unwrap();
    assert_eq!(parts.len(), 2);
    let start = parts[0]
        .chord_start
        .as_ref()
        .expect("the first part starts it");
    assert_eq!((start.group_id.as_str(), start.size), (group_id, 2));
    let part: Value = serde_json::from_slice(&parts[1].message.body).unwrap();
    assert_eq!(part[0], json!([2, 20]));
    // The body carries the step after the chord.
    let carried = &part[2]["chord"];
    assert_eq!(carried["options"]["task_id"], body["options"]["task_id"]);
    assert_eq!(
        carried["options"]["chain"][0]["options"]["task_id"],
        last_id.as_str()
    );
}

#[tokio::test]
async fn a_chord_step_runs_inline_in_eager_mode() {
    let steps = chain(add.s(1, 1)).then_chord([add.partial(1), add.partial(2)], sum_all.partial());
    let total = steps.apply_async_with(&eager_app()).await.unwrap();
    assert!(total.ready());
    assert_eq!(total.get(Duration::ZERO).await.unwrap(), 3 + 4);
}

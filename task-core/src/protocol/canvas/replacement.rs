//! The messages that replace a task that replaced itself (Celery's
//! `Task.replace`, `celery/app/task.py`), by a call, a chain, a group or a
//! chord.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{apply, Embed, FollowUp, Parent};
use crate::broker::headers::integer_value;
use crate::broker::Message;
use crate::protocol::chord_join::JOIN_QUEUE_HEADER;
use crate::protocol::task_message::TaskRequest;

/// The builtin task Celery puts after a group that replaces a task, so
/// that one result (the list of the members' values) answers the caller.
pub const ACCUMULATE_TASK: &str = "celery.accumulate";

/// The messages that replace the task of `message` (decoded as `request`,
/// whose lineage the run step moved out: it is read from the message; the
/// run step keeps the embed of a request that carries canvas) by
/// `signature` (in Celery's dict form: a task, a chain, a group or a
/// chord), as Celery's `Task.replace` sends them: a group becomes a chord
/// with a [`ACCUMULATE_TASK`] body; what gives the replacement's result
/// (the task, the chain's last step, the chord's body) takes over the
/// replaced task's id, its callbacks (added to its own), its group, index
/// and chord; its errbacks go to every step; its remaining chain steps
/// follow the replacement's own; every message is a child of the replaced
/// task, under the same root, with `replaced_task_nesting` one higher.
/// Unlike Celery's worker, the caller's `reply_to` is kept, so the caller
/// gets the replacement's result.
pub fn replacement(
    message: &Message,
    request: &TaskRequest,
    signature: &Value,
) -> Result<Vec<FollowUp>, String> {
    let original = Embed::of(request).unwrap_or_default();
    let headers = &message.properties.headers;
    let mut takeover = Map::new();
    takeover.insert("task_id".into(), request.id.as_str().into());
    if let Some(reply_to) = &request.reply_to {
        takeover.insert("reply_to".into(), reply_to.as_str().into());
    }
    if let Some(group) = headers.get_str("group") {
        takeover.insert("group_id".into(), group.into());
    }
    if let Some(index) = headers.get_json("group_index").filter(Value::is_u64) {
        takeover.insert("group_index".into(), index);
    }
    if let Some(chord) = original.chord() {
        let chord: Value = serde_json::from_str(chord.get()).map_err(|e| e.to_string())?;
        takeover.insert("chord".into(), chord);
    }
    if let Some(join_queue) = headers.get_str(JOIN_QUEUE_HEADER) {
        let extra = Map::from_iter([(JOIN_QUEUE_HEADER.to_owned(), join_queue.into())]);
        takeover.insert("headers".into(), extra.into());
    }
    let raw_list = |list: &[Box<RawValue>]| -> Result<Vec<Value>, String> {
        list.iter()
            .map(|raw| serde_json::from_str(raw.get()).map_err(|e| e.to_string()))
            .collect()
    };
    let callbacks = raw_list(original.callbacks())?;
    let errbacks = raw_list(original.errbacks())?;

    let mut replacement = uplifted(signature.clone());
    add_errbacks(&mut replacement, &errbacks)?;
    take_over(&mut replacement, takeover, &callbacks)?;
    let replacement = serde_json::value::to_raw_value(&replacement).map_err(|e| e.to_string())?;

    let root_id = headers.get_str("root_id").unwrap_or(&request.id);
    let parent = Parent {
        id: &request.id,
        root_id,
    };
    let mut follow = apply(parent, &replacement, None, original.chain(), None)?;
    let nesting = headers
        .get_json("replaced_task_nesting")
        .and_then(|nesting| nesting.as_i64())
        .unwrap_or(0)
        .saturating_add(1);
    for follow_up in &mut follow {
        let headers = &mut follow_up.message.properties.headers;
        headers.insert("replaced_task_nesting", integer_value(nesting));
    }
    Ok(follow)
}

/// `signature`, a group made a chord whose body accumulates the members'
/// values into one list (Celery: `sig |= celery.accumulate.s(index=0)`),
/// sent to the queue of the group's first member (Celery: the default
/// queue).
fn uplifted(signature: Value) -> Value {
    if signature.get("subtask_type").and_then(Value::as_str) != Some("group") {
        return signature;
    }
    let group_id = signature.pointer("/options/task_id").cloned();
    // It runs where the members run (the first one's queue), so that the
    // workers the group was meant for finish it.
    let mut body_options = Map::new();
    if let Some(queue) = signature.pointer("/kwargs/tasks/0/options/queue") {
        body_options.insert("queue".into(), queue.clone());
    }
    let body = serde_json::json!({
        "task": ACCUMULATE_TASK,
        "args": [],
        "kwargs": {"index": 0},
        "options": body_options,
        "subtask_type": null,
        "immutable": false,
    });
    let mut options = Map::new();
    if let Some(group_id) = group_id {
        options.insert("task_id".into(), group_id);
    }
    serde_json::json!({
        "task": "celery.chord",
        "args": [],
        "kwargs": {"kwargs": {}, "header": signature, "body": body},
        "options": options,
        "subtask_type": "chord",
        "immutable": false,
    })
}

/// The kind of a signature in Celery's dict form.
fn kind(signature: &Value) -> Option<&str> {
    signature.get("subtask_type").and_then(Value::as_str)
}

/// A signature's options, made a map if missing.
fn options(signature: &mut Value) -> Result<&mut Map<String, Value>, String> {
    let Value::Object(dict) = signature else {
        return Err("a signature is not a map".to_owned());
    };
    let options = dict
        .entry("options")
        .or_insert_with(|| Value::Object(Map::new()));
    if options.is_null() {
        *options = Value::Object(Map::new());
    }
    options
        .as_object_mut()
        .ok_or_else(|| "a signature's options are not a map".to_owned())
}

/// Appends `added` to the list option `key` (a single signature there is
/// a list of one).
fn append(options: &mut Map<String, Value>, key: &str, added: &[Value]) {
    if added.is_empty() {
        return;
    }
    let list = match options.remove(key) {
        Some(Value::Array(list)) => list,
        Some(Value::Null) | None => Vec::new(),
        Some(one) => vec![one],
    };
    let list = list.into_iter().chain(added.iter().cloned()).collect();
    options.insert(key.to_owned(), Value::Array(list));
}

/// A nested signature of a chain, group or chord (`kwargs.tasks`,
/// `kwargs.header`, `kwargs.body`).
fn nested<'a>(signature: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    signature.get_mut("kwargs")?.get_mut(key)
}

/// Gives every task of `signature` the errbacks `errbacks` (Celery's
/// `link_error` on a chain reaches each step; on a chord, its body).
fn add_errbacks(signature: &mut Value, errbacks: &[Value]) -> Result<(), String> {
    if errbacks.is_empty() {
        return Ok(());
    }
    match kind(signature) {
        Some("chain" | "group") => {
            let tasks = nested(signature, "tasks").and_then(Value::as_array_mut);
            for task in tasks.into_iter().flatten() {
                add_errbacks(task, errbacks)?;
            }
        }
        Some("chord") => {
            let body = nested(signature, "body").ok_or("a chord without a body")?;
            add_errbacks(body, errbacks)?;
        }
        _ => append(options(signature)?, "link_error", errbacks),
    }
    Ok(())
}

/// Makes what gives `signature`'s result (the task, a chain's last step, a
/// chord's body) take over the replaced task: the options `takeover` set,
/// the `callbacks` added to its own.
fn take_over(
    signature: &mut Value,
    takeover: Map<String, Value>,
    callbacks: &[Value],
) -> Result<(), String> {
    match kind(signature) {
        Some("chain") => {
            let last = nested(signature, "tasks")
                .and_then(Value::as_array_mut)
                .and_then(|tasks| tasks.last_mut())
                .ok_or("a task cannot be replaced by an empty chain")?;
            if kind(last) == Some("group") {
                return Err(
                    "a task cannot be replaced by a chain that ends in a group (its values are \
                     not one result): end it with a task"
                        .to_owned(),
                );
            }
            take_over(last, takeover, callbacks)
        }
        Some("chord") => {
            let body = nested(signature, "body").ok_or("a chord without a body")?;
            take_over(body, takeover, callbacks)
        }
        Some("group") => Err("a group replaces a task as a chord".to_owned()),
        Some(other) if other != "null" => Err(format!("a signature of unknown type `{other}`")),
        _ => {
            let options = options(signature)?;
            append(options, "link", callbacks);
            options.extend(takeover);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::broker::headers::integer_value;
    use crate::protocol::task_message::{decode_task, encode_task, TaskCall};

    /// A task `t` (root `root`) in group `g` at index 3, a part of the
    /// chord joined on `chord.g`, with a callback, an errback and one
    /// chain step after it.
    fn replaced_task() -> (Message, TaskRequest) {
        let call = TaskCall {
            reply_to: Some("caller"),
            root_id: Some("root"),
            parent_id: Some("p"),
            ..TaskCall::plain("t", "tasks.delegate")
        };
        let mut message = encode_task(&call).unwrap();
        message.body = br#"[[], {}, {"callbacks": [{"task": "cb"}], "errbacks": [{"task": "eb"}],
            "chain": [{"task": "last", "options": {"task_id": "l"}}],
            "chord": {"task": "body", "options": {"task_id": "b"}}}]"#
            .to_vec();
        let headers = &mut message.properties.headers;
        headers.insert_str("group", "g");
        headers.insert("group_index", integer_value(3));
        headers.insert_str(JOIN_QUEUE_HEADER, "chord.g");
        let request = decode_task(&message).unwrap();
        (message, request)
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .map(|list| list.iter().filter_map(|s| s["task"].as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_replacement_takes_over_the_id_lineage_and_canvas_of_the_task() {
        let (message, request) = replaced_task();
        let by = json!({"task": "tasks.add", "args": [1, 2], "kwargs": {},
            "options": {"queue": "q", "link": [{"task": "own"}]}});
        let follow = replacement(&message, &request, &by).unwrap();
        let [replacement] = &follow[..] else {
            panic!("one message");
        };
        assert_eq!(replacement.queue.as_deref(), Some("q"));
        let sent = decode_task(&replacement.message).unwrap();
        assert_eq!(sent.id, "t");
        assert_eq!(sent.name, "tasks.add");
        assert_eq!(
            sent.reply_to.as_deref(),
            Some("caller"),
            "the caller's kept"
        );
        assert_eq!(sent.parent_id.as_deref(), Some("t"));
        assert_eq!(sent.root_id.as_deref(), Some("root"));
        assert_eq!(
            (sent.group_id.as_deref(), sent.group_index),
            (Some("g"), Some(3))
        );
        let headers = &replacement.message.properties.headers;
        assert_eq!(headers.get_json("replaced_task_nesting"), Some(json!(1)));
        assert_eq!(headers.get_str(JOIN_QUEUE_HEADER), Some("chord.g"));
        let body: Value = serde_json::from_slice(&replacement.message.body).unwrap();
        assert_eq!(body[0], json!([1, 2]));
        assert_eq!(names(&body[2]["callbacks"]), ["own", "cb"]);
        assert_eq!(names(&body[2]["errbacks"]), ["eb"]);
        assert_eq!(body[2]["chain"][0]["options"]["task_id"], "l");
        assert_eq!(body[2]["chord"]["options"]["task_id"], "b");
    }

    #[test]
    fn a_chain_replacement_hands_the_task_over_to_its_last_step() {
        let (message, request) = replaced_task();
        let by = json!({"task": "celery.chain", "subtask_type": "chain", "args": [],
        "options": {}, "kwargs": {"tasks": [
            {"task": "first", "args": [1], "options": {"task_id": "f"}},
            {"task": "second", "args": [2], "options": {}},
        ]}});
        let follow = replacement(&message, &request, &by).unwrap();
        let [first] = &follow[..] else {
            panic!("one message: the chain's first step");
        };
        let sent = decode_task(&first.message).unwrap();
        assert_eq!((sent.id.as_str(), sent.name.as_str()), ("f", "first"));
        assert_eq!(sent.parent_id.as_deref(), Some("t"));
        assert_eq!(sent.root_id.as_deref(), Some("root"));
        assert_eq!(sent.group_id, None, "the group is the last step's");
        let body: Value = serde_json::from_slice(&first.message.body).unwrap();
        let embed = &body[2];
        assert_eq!(names(&embed["callbacks"]), Vec::<&str>::new());
        assert_eq!(names(&embed["errbacks"]), ["eb"], "errbacks on every step");
        assert!(embed["chord"].is_null());
        // The steps after it, the next one last: the replaced task's own
        // remaining step, then the chain's second step, which took over.
        assert_eq!(names(&embed["chain"]), ["last", "second"]);
        let second = &embed["chain"][1]["options"];
        assert_eq!(second["task_id"], "t");
        assert_eq!(second["reply_to"], "caller");
        assert_eq!(
            (second["group_id"].clone(), second["group_index"].clone()),
            (json!("g"), json!(3))
        );
        assert_eq!(second["chord"]["options"]["task_id"], "b");
        assert_eq!(second["headers"][JOIN_QUEUE_HEADER], "chord.g");
        assert_eq!(names(&second["link"]), ["cb"]);
        assert_eq!(names(&second["link_error"]), ["eb"]);
    }

    #[test]
    fn a_group_replacement_is_a_chord_accumulating_its_values() {
        let (message, request) = replaced_task();
        let by = json!({"task": "celery.group", "subtask_type": "group", "args": [],
        "options": {"task_id": "grp"}, "kwargs": {"tasks": [
            {"task": "a", "args": [], "options": {"queue": "q"}},
            {"task": "b", "args": [], "options": {}},
        ]}});
        let follow = replacement(&message, &request, &by).unwrap();
        assert_eq!(follow.len(), 2, "the header parts");
        let start = follow[0]
            .chord_start
            .as_ref()
            .expect("the first starts the chord");
        assert_eq!((start.group_id.as_str(), start.size), ("grp", 2));
        let body: Value = serde_json::from_str(start.body.get()).unwrap();
        assert_eq!(body["task"], ACCUMULATE_TASK);
        assert_eq!(body["kwargs"], json!({"index": 0}));
        assert_eq!(body["options"]["queue"], "q", "where its members run");
        assert_eq!(body["options"]["task_id"], "t");
        assert_eq!(
            body["options"]["group_id"], "g",
            "the replaced task's group"
        );
        assert_eq!(names(&body["options"]["chain"]), ["last"]);
        for (index, part) in follow.iter().enumerate() {
            let sent = decode_task(&part.message).unwrap();
            assert_eq!(sent.group_id.as_deref(), Some("grp"));
            assert_eq!(sent.group_index, u32::try_from(index).ok());
            assert_eq!(sent.parent_id.as_deref(), Some("t"));
        }
    }

    #[test]
    fn shapes_that_give_no_single_result_are_refused() {
        let (message, request) = replaced_task();
        let empty = json!({"task": "celery.chain", "subtask_type": "chain",
            "kwargs": {"tasks": []}});
        let refused = replacement(&message, &request, &empty).err().unwrap();
        assert!(refused.contains("empty chain"), "{refused}");
        let ends_in_group = json!({"task": "celery.chain", "subtask_type": "chain",
            "kwargs": {"tasks": [{"task": "a"}, {"task": "celery.group",
                "subtask_type": "group", "kwargs": {"tasks": [{"task": "b"}]}}]}});
        let refused = replacement(&message, &request, &ends_in_group)
            .err()
            .unwrap();
        assert!(refused.contains("ends in a group"), "{refused}");
    }
}

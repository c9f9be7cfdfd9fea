//! The result meta Celery's key-value backends store: what a worker hands a
//! backend ([`ResultRecord`]), how it is written for Celery
//! ([`celery_meta`]), and what a reader gets back ([`ResultMeta`]).

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::broker::Message;
use crate::protocol::result_message::{ResultBody, TaskState};

/// One state of one task, as a worker hands it to a backend.
#[derive(Debug, Clone, Copy)]
pub struct ResultRecord<'a> {
    /// The task.
    pub task_id: &'a str,
    /// The result as Celery's `rpc://` result message carries it: a JSON
    /// object with `task_id`, `status`, `result`, `traceback`, `children`
    /// and `date_done` (also the core of the meta key-value backends store).
    pub result: &'a Message,
    /// The caller's reply queue (what `rpc://` publishes to).
    pub reply_to: Option<&'a str>,
    /// The task message this result answers, when it is the task's own run
    /// (a FAILURE told to the remaining steps of a chain has none): its
    /// lineage (`parent_id`, `group_id`) and, with `result_extended`, its
    /// name, arguments and queue are stored too.
    pub task: Option<TaskMessageRef<'a>>,
}

/// The task message a result answers, and the queue it came from.
#[derive(Debug, Clone, Copy)]
pub struct TaskMessageRef<'a> {
    /// The task message as received.
    pub message: &'a Message,
    /// The queue it was consumed from.
    pub queue: &'a str,
}

/// Writes the meta Celery's key-value backends store for `record`: the
/// result message's object plus `parent_id` and `group_id` (when the task
/// has them) and, when `extended` (Celery's `result_extended`), `name`,
/// `args`, `kwargs`, `worker`, `retries` and `queue`. Fails only when the
/// result message is not a JSON object (it always is when made by this
/// crate).
pub(crate) fn celery_meta(record: &ResultRecord<'_>, extended: bool) -> Option<Vec<u8>> {
    let body = record.result.body.as_slice();
    let end = body.iter().rposition(|&b| b == b'}')?;
    let mut meta = Vec::with_capacity(body.len() + 128);
    meta.extend_from_slice(&body[..end]);
    let Some(task) = record.task else {
        meta.push(b'}');
        return Some(meta);
    };
    let headers = &task.message.properties.headers;
    let mut field = |name: &str, value: &dyn erased::Json| {
        meta.extend_from_slice(b",\"");
        meta.extend_from_slice(name.as_bytes());
        meta.extend_from_slice(b"\":");
        value.write(&mut meta);
    };
    if let Some(parent) = headers.get_str("parent_id") {
        field("parent_id", &parent);
    }
    if let Some(group) = headers.get_str("group") {
        field("group_id", &group);
    }
    if extended {
        let (args, kwargs) = arguments(&task.message.body);
        field("name", &headers.get_str("task"));
        field("args", &args);
        field("kwargs", &kwargs);
        field("worker", &crate::protocol::worker_nodename());
        field(
            "retries",
            &headers
                .get_json("retries")
                .and_then(|v| v.as_u64())
                .unwrap_or(0),
        );
        field("queue", &task.queue);
    }
    meta.push(b'}');
    Some(meta)
}

/// A task message's positional and keyword arguments, as JSON (`null`
/// when the body is not a protocol v2 body).
fn arguments(body: &[u8]) -> (Option<Box<RawValue>>, Option<Box<RawValue>>) {
    #[derive(Deserialize)]
    struct Body(Box<RawValue>, Box<RawValue>, #[allow(dead_code)] IgnoredAny);
    match serde_json::from_slice::<Body>(body) {
        Ok(Body(args, kwargs, _)) => (Some(args), Some(kwargs)),
        Err(_) => (None, None),
    }
}

/// Values written into a meta object (serde_json, written in place).
mod erased {
    pub(super) trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            // Strings, integers and raw JSON always serialize.
            if serde_json::to_writer(&mut *out, self).is_err() {
                out.extend_from_slice(b"null");
            }
        }
    }
}

/// What a backend holds for one task: Celery's result meta, as any Celery
/// process writes it.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct ResultMeta {
    /// The task.
    pub task_id: String,
    /// Its latest state.
    pub status: TaskState,
    /// The value (SUCCESS), the exception (FAILURE, RETRY, REVOKED) or
    /// `{pid, hostname}` (STARTED), as JSON; `None` for `null`.
    #[serde(default)]
    pub result: Option<Box<RawValue>>,
    /// The failure's traceback.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Results of tasks this one started, as Celery records them.
    #[serde(default)]
    pub children: Option<Box<RawValue>>,
    /// When it finished (ISO 8601), for the ready states.
    #[serde(default)]
    pub date_done: Option<String>,
    /// The task whose worker sent this one.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// The group it is part of.
    #[serde(default)]
    pub group_id: Option<String>,
    /// The task's name (`result_extended`).
    #[serde(default)]
    pub name: Option<String>,
    /// Its positional arguments (`result_extended`).
    #[serde(default)]
    pub args: Option<Box<RawValue>>,
    /// Its keyword arguments (`result_extended`).
    #[serde(default)]
    pub kwargs: Option<Box<RawValue>>,
    /// The worker that ran it (`result_extended`).
    #[serde(default)]
    pub worker: Option<String>,
    /// How many times it was retried (`result_extended`).
    #[serde(default)]
    pub retries: Option<u32>,
    /// The queue it was taken from (`result_extended`).
    #[serde(default)]
    pub queue: Option<String>,
}

impl ResultMeta {
    /// Reads a stored meta; `key` names where it was read, for the error.
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Self, super::BackendError> {
        serde_json::from_slice(bytes).map_err(|error| super::BackendError::Corrupt {
            key: key.to_owned(),
            reason: error.to_string(),
        })
    }

    /// The part a waiting [`AsyncResult`](crate::AsyncResult) reads.
    pub(crate) fn into_body(self) -> ResultBody {
        ResultBody {
            task_id: self.task_id,
            status: self.status,
            result: self.result,
            traceback: self.traceback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Headers, Properties};
    use crate::protocol::result_message;

    fn task_message() -> Message {
        let mut headers = Headers::new();
        headers.insert_str("task", "tasks.add");
        headers.insert_str("parent_id", "p-1");
        headers.insert_str("group", "g-1");
        headers.insert_json("retries", &serde_json::json!(2));
        Message {
            properties: Properties {
                headers,
                ..Properties::default()
            },
            body: br#"[[2, 3], {"z": 1}, {"callbacks": null}]"#.to_vec(),
        }
    }

    #[test]
    fn meta_adds_lineage_and_extended_fields_to_the_result() {
        let value = serde_json::value::to_raw_value(&5).unwrap();
        let result = result_message::success("t-1", &value);
        let task = task_message();
        let record = ResultRecord {
            task_id: "t-1",
            result: &result,
            reply_to: None,
            task: Some(TaskMessageRef {
                message: &task,
                queue: "math",
            }),
        };
        let plain: serde_json::Value =
            serde_json::from_slice(&celery_meta(&record, false).unwrap()).unwrap();
        assert_eq!(plain["status"], "SUCCESS");
        assert_eq!(plain["result"], 5);
        assert_eq!(plain["parent_id"], "p-1");
        assert_eq!(plain["group_id"], "g-1");
        assert_eq!(plain["children"], serde_json::json!([]));
        assert!(plain.get("name").is_none(), "{plain}");

        let meta = celery_meta(&record, true).unwrap();
        let extended: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(extended["name"], "tasks.add");
        assert_eq!(extended["args"], serde_json::json!([2, 3]));
        assert_eq!(extended["kwargs"], serde_json::json!({"z": 1}));
        assert_eq!(extended["retries"], 2);
        assert_eq!(extended["queue"], "math");
        assert!(extended["worker"].as_str().unwrap().contains('@'));

        let read = ResultMeta::decode("k", &meta).unwrap();
        assert_eq!(read.status, TaskState::Success);
        assert_eq!(read.parent_id.as_deref(), Some("p-1"));
        assert_eq!(read.retries, Some(2));
        assert_eq!(read.into_body().result.unwrap().get(), "5");
    }

    #[test]
    fn a_result_without_its_task_message_is_stored_as_sent() {
        let error = crate::TaskError::new("ValueError", "bad");
        let result = result_message::failure("t-2", &error);
        let record = ResultRecord {
            task_id: "t-2",
            result: &result,
            reply_to: None,
            task: None,
        };
        assert_eq!(celery_meta(&record, true).unwrap(), result.body);
    }

    #[test]
    fn corrupt_and_foreign_values_are_typed_errors() {
        for bytes in [&b"not json"[..], b"{\"status\": \"SUCCESS\"}", b"[1, 2]"] {
            let error = ResultMeta::decode("celery-task-meta-x", bytes).unwrap_err();
            assert!(
                matches!(error, super::super::BackendError::Corrupt { .. }),
                "{error}"
            );
        }
    }
}

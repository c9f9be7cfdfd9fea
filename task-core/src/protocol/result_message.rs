//! Result messages of Celery's `rpc://` backend: one JSON object per state
//! change, published by the worker to the caller's `reply_to` queue with the
//! task id as `correlation_id`.

use std::fmt;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{format_time, hostname, CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON};
use crate::broker::{Message, Properties};
use crate::TaskError;

/// The states a task goes through, as Celery names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    /// Nothing is known yet (Celery's state for unknown ids).
    Pending,
    /// A worker received the task (sent only by some workers).
    Received,
    /// A worker started running it (with `track_started`).
    Started,
    /// It failed and will be retried.
    Retry,
    /// It finished with a value.
    Success,
    /// It finished with an error.
    Failure,
    /// It was revoked (e.g. expired) and will not run.
    Revoked,
    /// A worker rejected its message (Celery's `Reject` raised by the task):
    /// the message went back to the broker or was dead-lettered, and the
    /// caller gets no result from this run.
    Rejected,
    /// The task asked for its result to be ignored (Celery's `Ignore`): no
    /// result will come.
    Ignored,
}

impl TaskState {
    /// Whether the task is finished for the caller: no further state will
    /// come. Besides SUCCESS, FAILURE and REVOKED (Celery's ready states),
    /// REJECTED and IGNORED end the wait too: Celery counts them as not
    /// ready, but no result follows them.
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failure | Self::Revoked | Self::Rejected | Self::Ignored
        )
    }

    /// The name on the wire (`"SUCCESS"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Received => "RECEIVED",
            Self::Started => "STARTED",
            Self::Retry => "RETRY",
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Revoked => "REVOKED",
            Self::Rejected => "REJECTED",
            Self::Ignored => "IGNORED",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as Celery serializes it in a FAILURE (or REVOKED) result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// The exception type name (`"ValueError"`, `"ParseIntError"`).
    pub exc_type: String,
    /// The exception's arguments; by convention the first is the message.
    #[serde(default)]
    pub exc_message: serde_json::Value,
    /// The Python module of the type (`"builtins"`, `"rust"`, ...).
    #[serde(default)]
    pub exc_module: Option<String>,
}

impl ExceptionInfo {
    /// The exception's arguments as Celery sends them (`exc_message`): a
    /// list, or a single value (older senders) as a list of one.
    pub fn args(&self) -> Vec<serde_json::Value> {
        match &self.exc_message {
            serde_json::Value::Array(items) => items.clone(),
            serde_json::Value::Null => Vec::new(),
            other => vec![other.clone()],
        }
    }

    /// The message: the exception's arguments joined as text.
    pub fn message(&self) -> String {
        match &self.exc_message {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

impl From<&TaskError> for ExceptionInfo {
    fn from(error: &TaskError) -> Self {
        Self {
            exc_type: error.exc_type().to_owned(),
            exc_message: serde_json::Value::Array(match error.exc_args() {
                Some(args) => args.to_vec(),
                None => vec![error.message().into()],
            }),
            exc_module: Some(error.exc_module().to_owned()),
        }
    }
}

/// The body of a result message as written.
#[derive(Serialize)]
struct OutgoingResult<'a> {
    task_id: &'a str,
    status: TaskState,
    result: &'a RawValue,
    traceback: Option<&'a str>,
    children: [(); 0],
    date_done: Option<String>,
}

/// The body of a result message as read.
#[derive(Debug, Deserialize)]
pub struct ResultBody {
    /// The task id.
    pub task_id: String,
    /// The new state.
    pub status: TaskState,
    /// The value (SUCCESS), exception (FAILURE, RETRY, REVOKED) or
    /// `{pid, hostname}` (STARTED); `None` stands for JSON `null`.
    #[serde(default)]
    pub result: Option<Box<RawValue>>,
    /// Error traceback text.
    #[serde(default)]
    pub traceback: Option<String>,
}

impl ResultBody {
    /// Reads a result message body.
    pub fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// Writes the result message for `task_id` in state `status`.
pub fn encode_result(
    task_id: &str,
    status: TaskState,
    result: &RawValue,
    traceback: Option<&str>,
) -> Message {
    let body = OutgoingResult {
        task_id,
        status,
        result,
        traceback,
        children: [],
        date_done: status.is_ready().then(|| format_time(Utc::now())),
    };
    Message {
        properties: Properties {
            content_type: Some(CONTENT_TYPE_JSON.into()),
            content_encoding: Some(CONTENT_ENCODING_UTF8.into()),
            correlation_id: Some(task_id.to_owned()),
            persistent: false,
            ..Properties::default()
        },
        body: serde_json::to_vec(&body).expect("result bodies always serialize"),
    }
}

/// A SUCCESS result carrying `value`.
pub fn success(task_id: &str, value: &RawValue) -> Message {
    encode_result(task_id, TaskState::Success, value, None)
}

/// The traceback sent for `error` (in its FAILURE result and its
/// `task-failed` event): the error as text with its causes, which a
/// Python client shows as the remote traceback.
pub fn traceback_of(error: &TaskError) -> String {
    match error.traceback() {
        Some(causes) => format!("{error}\n{causes}"),
        None => error.to_string(),
    }
}

/// A FAILURE result for `error`, with [`traceback_of`] it.
pub fn failure(task_id: &str, error: &TaskError) -> Message {
    let traceback = traceback_of(error);
    exception(
        task_id,
        TaskState::Failure,
        &ExceptionInfo::from(error),
        Some(&traceback),
    )
}

/// A result of state `status` carrying an exception.
pub fn exception(
    task_id: &str,
    status: TaskState,
    info: &ExceptionInfo,
    traceback: Option<&str>,
) -> Message {
    let raw = serde_json::value::to_raw_value(info).expect("exception info always serializes");
    encode_result(task_id, status, &raw, traceback)
}

/// A FAILURE `NotRegistered` for a task name no worker knows, as Celery
/// reports it.
pub fn not_registered(task_id: &str, name: &str) -> Message {
    let info = ExceptionInfo {
        exc_type: "NotRegistered".into(),
        exc_message: serde_json::Value::Array(vec![format!("'{name}'").into()]),
        exc_module: Some("celery.exceptions".into()),
    };
    exception(task_id, TaskState::Failure, &info, None)
}

/// Celery's `ChordError` reason for a chord whose part `task_id` failed
/// with `result` (its exception): `Dependency <id> raised ValueError('boom')`.
pub fn chord_error_reason(task_id: &str, result: &RawValue) -> String {
    let raised = match serde_json::from_str::<ExceptionInfo>(result.get()) {
        Ok(info) => format!("{}({:?})", info.exc_type, info.message()).replace('"', "'"),
        Err(_) => result.get().to_owned(),
    };
    format!("Dependency {task_id} raised {raised}")
}

/// The FAILURE a chord's body gets when a part failed: Celery's own
/// `celery.exceptions.ChordError`, so a Python client raises it as such.
pub fn chord_error(body_id: &str, reason: &str) -> Message {
    let info = ExceptionInfo {
        exc_type: "ChordError".into(),
        exc_message: serde_json::Value::Array(vec![reason.into()]),
        exc_module: Some("celery.exceptions".into()),
    };
    let traceback = format!("ChordError: {reason}");
    exception(body_id, TaskState::Failure, &info, Some(&traceback))
}

/// A STARTED result: `{"pid": ..., "hostname": ...}`.
pub fn started(task_id: &str) -> Message {
    let info = serde_json::json!({ "pid": std::process::id(), "hostname": hostname() });
    let raw = serde_json::value::to_raw_value(&info).expect("json always serializes");
    encode_result(task_id, TaskState::Started, &raw, None)
}

/// A REJECTED result: the task rejected its message with requeue
/// (`reason`), where no queue can take it back (eager mode).
pub fn rejected(task_id: &str, reason: &str) -> Message {
    let info = ExceptionInfo {
        exc_type: "Reject".into(),
        exc_message: serde_json::Value::Array(vec![reason.into(), true.into()]),
        exc_module: Some("celery.exceptions".into()),
    };
    exception(task_id, TaskState::Rejected, &info, None)
}

/// An IGNORED result: the task asked to end without one (Celery's
/// `Ignore`).
pub fn ignored(task_id: &str) -> Message {
    let null =
        RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"));
    encode_result(task_id, TaskState::Ignored, &null, None)
}

/// A REVOKED result: the task will not run (`reason`: `"revoked"`,
/// `"expired"`, `"terminated"`).
pub fn revoked(task_id: &str, reason: &str) -> Message {
    let info = ExceptionInfo {
        exc_type: "TaskRevokedError".into(),
        exc_message: serde_json::Value::Array(vec![reason.into()]),
        exc_module: Some("celery.exceptions".into()),
    };
    exception(task_id, TaskState::Revoked, &info, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip() {
        let raw = serde_json::value::to_raw_value(&5).unwrap();
        let message = success("t1", &raw);
        let body = ResultBody::decode(&message.body).unwrap();
        assert_eq!(body.task_id, "t1");
        assert_eq!(body.status, TaskState::Success);
        assert_eq!(body.result.unwrap().get(), "5");
        assert_eq!(message.properties.correlation_id.as_deref(), Some("t1"));

        let error = TaskError::new("ValueError", "bad").with_traceback("tb");
        let body = ResultBody::decode(&failure("t2", &error).body).unwrap();
        assert_eq!(body.status, TaskState::Failure);
        assert_eq!(body.traceback.as_deref(), Some("ValueError: bad\ntb"));
        let info: ExceptionInfo = serde_json::from_str(body.result.unwrap().get()).unwrap();
        assert_eq!(info.exc_type, "ValueError");
        assert_eq!(info.message(), "bad");
        assert_eq!(info.exc_module.as_deref(), Some("builtins"));
    }

    #[test]
    fn celery_rejected_and_ignored_states_decode() {
        let rejected = br#"{"task_id": "r1", "status": "REJECTED", "result": {"exc_type": "Reject", "exc_message": ["no room", false], "exc_module": "celery.exceptions"}, "traceback": null, "children": [], "date_done": null}"#;
        let body = ResultBody::decode(rejected).unwrap();
        assert_eq!(
            (body.task_id.as_str(), body.status),
            ("r1", TaskState::Rejected)
        );
        let ignored = br#"{"task_id": "i1", "status": "IGNORED", "result": null, "traceback": null, "children": [], "date_done": null}"#;
        let body = ResultBody::decode(ignored).unwrap();
        assert_eq!(
            (body.task_id.as_str(), body.status),
            ("i1", TaskState::Ignored)
        );
        for state in [TaskState::Rejected, TaskState::Ignored] {
            assert!(state.is_ready(), "{state}: no other result follows");
            let wire = serde_json::to_value(state).unwrap();
            assert_eq!(wire, state.as_str());
        }
        assert_eq!(TaskState::Rejected.as_str(), "REJECTED");
        assert_eq!(TaskState::Ignored.as_str(), "IGNORED");
    }

    #[test]
    fn chord_errors_name_the_part_and_its_exception_as_celery_does() {
        let raw = serde_json::value::to_raw_value(&serde_json::json!(
            {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}
        ))
        .unwrap();
        let reason = chord_error_reason("t-1", &raw);
        assert_eq!(reason, "Dependency t-1 raised ValueError('boom')");
        let value: serde_json::Value =
            serde_json::from_slice(&chord_error("b-1", &reason).body).unwrap();
        assert_eq!(value["result"]["exc_type"], "ChordError");
        assert_eq!(value["result"]["exc_module"], "celery.exceptions");
    }

    #[test]
    fn wire_shape_matches_celery() {
        let value: serde_json::Value =
            serde_json::from_slice(&revoked("t3", "expired").body).unwrap();
        assert_eq!(value["status"], "REVOKED");
        assert_eq!(value["result"]["exc_type"], "TaskRevokedError");
        assert_eq!(value["children"], serde_json::json!([]));
        assert!(value["date_done"].as_str().unwrap().ends_with("+00:00"));
        let value: serde_json::Value = serde_json::from_slice(&started("t4").body).unwrap();
        assert_eq!(value["status"], "STARTED");
        assert!(value["result"]["pid"].is_u64());
    }
}

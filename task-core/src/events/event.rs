//! [`Event`]: one of Celery's events, typed, to and from its JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The fields every event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventHeader {
    /// The sender's node name (`celery@host`; a client's is
    /// `gen<pid>@host`). Flower counts events by it.
    pub hostname: String,
    /// The sender's offset from UTC in hours, **west** positive (Python's
    /// `time.timezone / 3600`): `-1.0` in Berlin in winter.
    #[serde(default)]
    pub utcoffset: f64,
    /// The sender's process id.
    #[serde(default)]
    pub pid: u32,
    /// The sender's Lamport clock when it sent the event.
    #[serde(default)]
    pub clock: u64,
    /// When it was sent, seconds since the Unix epoch.
    pub timestamp: f64,
}

/// What `worker-online`, `worker-heartbeat` and `worker-offline` carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Seconds between heartbeats (2.0; 5 for a heartbeat asked for by the
    /// `heartbeat` command, which has no counts).
    pub freq: f64,
    /// Tasks running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<u64>,
    /// Tasks done since the worker started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed: Option<u64>,
    /// The host's load averages over 1, 5 and 15 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadavg: Option<Vec<f64>>,
    /// The worker software (`py-celery` for Celery's).
    #[serde(default)]
    pub sw_ident: String,
    /// Its version.
    #[serde(default)]
    pub sw_ver: String,
    /// The operating system (`Linux`).
    #[serde(default)]
    pub sw_sys: String,
}

/// `task-sent`: a client published a task (when it sends these events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSent {
    /// The task id.
    pub uuid: String,
    /// The task name.
    pub name: String,
    /// Positional arguments, as a Python repr (`(2, 3)`).
    pub args: String,
    /// Keyword arguments, as a Python repr (`{'x': 1}`).
    pub kwargs: String,
    /// The first task of the workflow.
    #[serde(default)]
    pub root_id: Option<String>,
    /// The task that sent this one.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Times retried.
    #[serde(default)]
    pub retries: u32,
    /// Not before (ISO 8601).
    #[serde(default)]
    pub eta: Option<String>,
    /// Not after (ISO 8601).
    #[serde(default)]
    pub expires: Option<String>,
    /// The queue it was sent to.
    #[serde(default)]
    pub queue: Option<String>,
    /// The exchange it was published to (`""`: the default one).
    #[serde(default)]
    pub exchange: Option<String>,
    /// Its routing key.
    #[serde(default)]
    pub routing_key: Option<String>,
}

/// `task-received`: a worker took the task's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReceived {
    /// The task id.
    pub uuid: String,
    /// The task name.
    pub name: String,
    /// Positional arguments, as a Python repr.
    pub args: String,
    /// Keyword arguments, as a Python repr.
    pub kwargs: String,
    /// The first task of the workflow.
    #[serde(default)]
    pub root_id: Option<String>,
    /// The task that sent this one.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Times retried.
    #[serde(default)]
    pub retries: u32,
    /// Not before (ISO 8601).
    #[serde(default)]
    pub eta: Option<String>,
    /// Not after (ISO 8601).
    #[serde(default)]
    pub expires: Option<String>,
}

/// `task-started`: the body started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStarted {
    /// The task id.
    pub uuid: String,
}

/// `task-succeeded`: the body returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSucceeded {
    /// The task id.
    pub uuid: String,
    /// The value, as a Python repr (`'done'`, `5`).
    pub result: String,
    /// How long the body ran, in seconds.
    pub runtime: f64,
}

/// `task-failed`: the body failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// The task id.
    pub uuid: String,
    /// The exception, as a Python repr (`ValueError('boom')`).
    pub exception: String,
    /// Its traceback.
    #[serde(default)]
    pub traceback: Option<String>,
}

/// `task-retried`: the body failed and runs again later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRetried {
    /// The task id.
    pub uuid: String,
    /// The exception, as a Python repr.
    pub exception: String,
    /// Its traceback.
    #[serde(default)]
    pub traceback: Option<String>,
}

/// `task-revoked`: the task was revoked, terminated or expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRevoked {
    /// The task id.
    pub uuid: String,
    /// Stopped while it ran.
    #[serde(default)]
    pub terminated: bool,
    /// The signal it was stopped with (Celery's; a Rust worker cancels an
    /// async body instead and sends the signal asked for).
    #[serde(default)]
    pub signum: Option<i32>,
    /// Revoked because it expired.
    #[serde(default)]
    pub expired: bool,
}

/// `task-rejected`: the message was rejected (dead-lettered, or requeued).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRejected {
    /// The task id.
    pub uuid: String,
    /// Sent back to its queue.
    #[serde(default)]
    pub requeue: bool,
}

/// What an event says, by its type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// `worker-online`: a worker started.
    WorkerOnline(WorkerStatus),
    /// `worker-heartbeat`: a worker is alive (every `freq` seconds).
    WorkerHeartbeat(WorkerStatus),
    /// `worker-offline`: a worker stopped.
    WorkerOffline(WorkerStatus),
    /// `task-sent`.
    TaskSent(TaskSent),
    /// `task-received`.
    TaskReceived(TaskReceived),
    /// `task-started`.
    TaskStarted(TaskStarted),
    /// `task-succeeded`.
    TaskSucceeded(TaskSucceeded),
    /// `task-failed`.
    TaskFailed(TaskFailed),
    /// `task-retried`.
    TaskRetried(TaskRetried),
    /// `task-revoked`.
    TaskRevoked(TaskRevoked),
    /// `task-rejected`.
    TaskRejected(TaskRejected),
    /// Any other type (`worker-custom`, `task-cancelled`, ...), its fields
    /// as sent, less those of the header.
    Other {
        /// The event's `type`.
        event_type: String,
        /// Its other fields.
        fields: Map<String, Value>,
    },
}

impl EventKind {
    /// The event's `type` (`worker-heartbeat`, `task-succeeded`, ...).
    pub fn event_type(&self) -> &str {
        match self {
            Self::WorkerOnline(_) => "worker-online",
            Self::WorkerHeartbeat(_) => "worker-heartbeat",
            Self::WorkerOffline(_) => "worker-offline",
            Self::TaskSent(_) => "task-sent",
            Self::TaskReceived(_) => "task-received",
            Self::TaskStarted(_) => "task-started",
            Self::TaskSucceeded(_) => "task-succeeded",
            Self::TaskFailed(_) => "task-failed",
            Self::TaskRetried(_) => "task-retried",
            Self::TaskRevoked(_) => "task-revoked",
            Self::TaskRejected(_) => "task-rejected",
            Self::Other { event_type, .. } => event_type,
        }
    }

    /// The task id, for a task event.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Self::TaskSent(e) => Some(&e.uuid),
            Self::TaskReceived(e) => Some(&e.uuid),
            Self::TaskStarted(e) => Some(&e.uuid),
            Self::TaskSucceeded(e) => Some(&e.uuid),
            Self::TaskFailed(e) => Some(&e.uuid),
            Self::TaskRetried(e) => Some(&e.uuid),
            Self::TaskRevoked(e) => Some(&e.uuid),
            Self::TaskRejected(e) => Some(&e.uuid),
            Self::Other { fields, .. } => fields.get("uuid").and_then(Value::as_str),
            Self::WorkerOnline(_) | Self::WorkerHeartbeat(_) | Self::WorkerOffline(_) => None,
        }
    }

    /// The routing key Celery publishes it with: its type with dots
    /// (`task.succeeded`).
    pub fn routing_key(&self) -> String {
        self.event_type().replace('-', ".")
    }
}

/// One event: who sent it and when, and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The fields every event carries.
    pub header: EventHeader,
    /// What it says.
    pub kind: EventKind,
}

/// A message on the event exchange that is not an event.
#[derive(Debug, thiserror::Error)]
#[error("not a Celery event: {reason}")]
pub struct EventDecodeError {
    reason: String,
}

impl EventDecodeError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// An event as Celery's JSON has it: `type`, the header's fields and the
/// type's, flat in one object.
#[derive(Serialize)]
struct Wire<'a, T: Serialize> {
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(flatten)]
    header: &'a EventHeader,
    #[serde(flatten)]
    fields: &'a T,
}

impl Event {
    /// The event in Celery's JSON.
    pub fn to_json(&self) -> Value {
        fn wire<T: Serialize>(event_type: &str, header: &EventHeader, fields: &T) -> Value {
            serde_json::to_value(Wire {
                event_type,
                header,
                fields,
            })
            .unwrap_or(Value::Null)
        }
        let header = &self.header;
        let event_type = self.kind.event_type();
        match &self.kind {
            EventKind::WorkerOnline(f)
            | EventKind::WorkerHeartbeat(f)
            | EventKind::WorkerOffline(f) => wire(event_type, header, f),
            EventKind::TaskSent(f) => wire(event_type, header, f),
            EventKind::TaskReceived(f) => wire(event_type, header, f),
            EventKind::TaskStarted(f) => wire(event_type, header, f),
            EventKind::TaskSucceeded(f) => wire(event_type, header, f),
            EventKind::TaskFailed(f) => wire(event_type, header, f),
            EventKind::TaskRetried(f) => wire(event_type, header, f),
            EventKind::TaskRevoked(f) => wire(event_type, header, f),
            EventKind::TaskRejected(f) => wire(event_type, header, f),
            EventKind::Other { fields, .. } => wire(event_type, header, fields),
        }
    }

    /// Reads one event from Celery's JSON.
    pub fn from_json(value: &Value) -> Result<Self, EventDecodeError> {
        let object = value
            .as_object()
            .ok_or_else(|| EventDecodeError::new("an event is a JSON object"))?;
        let event_type = object
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| EventDecodeError::new("no `type`"))?;
        let header = EventHeader::deserialize(value)
            .map_err(|e| EventDecodeError::new(format!("{event_type}: {e}")))?;
        fn fields<'v, T: Deserialize<'v>>(
            event_type: &str,
            value: &'v Value,
        ) -> Result<T, EventDecodeError> {
            T::deserialize(value).map_err(|e| EventDecodeError::new(format!("{event_type}: {e}")))
        }
        let kind = match event_type {
            "worker-online" => EventKind::WorkerOnline(fields(event_type, value)?),
            "worker-heartbeat" => EventKind::WorkerHeartbeat(fields(event_type, value)?),
            "worker-offline" => EventKind::WorkerOffline(fields(event_type, value)?),
            "task-sent" => EventKind::TaskSent(fields(event_type, value)?),
            "task-received" => EventKind::TaskReceived(fields(event_type, value)?),
            "task-started" => EventKind::TaskStarted(fields(event_type, value)?),
            "task-succeeded" => EventKind::TaskSucceeded(fields(event_type, value)?),
            "task-failed" => EventKind::TaskFailed(fields(event_type, value)?),
            "task-retried" => EventKind::TaskRetried(fields(event_type, value)?),
            "task-revoked" => EventKind::TaskRevoked(fields(event_type, value)?),
            "task-rejected" => EventKind::TaskRejected(fields(event_type, value)?),
            other => {
                let mut rest = object.clone();
                for key in ["type", "hostname", "utcoffset", "pid", "clock", "timestamp"] {
                    rest.remove(key);
                }
                EventKind::Other {
                    event_type: other.to_owned(),
                    fields: rest,
                }
            }
        };
        Ok(Self { header, kind })
    }

    /// The events in one message body: an object, or a list of them (the
    /// batches Celery's worker sends on `task.multi`).
    pub fn from_body(body: &[u8]) -> Result<Vec<Self>, EventDecodeError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| EventDecodeError::new(format!("not JSON: {e}")))?;
        match &value {
            Value::Array(events) => events.iter().map(Self::from_json).collect(),
            single => Self::from_json(single).map(|event| vec![event]),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_celery_heartbeat_reads_and_writes_back_the_same() {
        let sent = json!({"hostname":"cwA@vm","utcoffset":0.0,"pid":15902,"clock":2,"freq":2.0,
            "active":0,"processed":0,"loadavg":[2.3,1.28,0.54],"sw_ident":"py-celery",
            "sw_ver":"5.7.0","sw_sys":"Linux","timestamp":1796150215.96,"type":"worker-heartbeat"});
        let event = Event::from_json(&sent).unwrap();
        assert_eq!(event.header.hostname, "cwA@vm");
        let EventKind::WorkerHeartbeat(status) = &event.kind else {
            panic!("{event:?}")
        };
        assert_eq!((status.active, status.processed), (Some(0), Some(0)));
        assert_eq!(event.to_json(), sent);
    }

    #[test]
    fn task_events_carry_their_fields_and_unknown_types_are_kept() {
        let revoked = json!({"hostname":"cwA@vm","utcoffset":0.0,"pid":15902,"clock":206,
            "uuid":"832c","terminated":true,"signum":9,"expired":false,
            "timestamp":1796150394.13,"type":"task-revoked"});
        let event = Event::from_json(&revoked).unwrap();
        assert_eq!(event.kind.task_id(), Some("832c"));
        assert_eq!(event.kind.routing_key(), "task.revoked");
        assert_eq!(event.to_json(), revoked);

        let custom = json!({"hostname":"h","timestamp":1.0,"type":"worker-custom","x":1});
        let event = Event::from_json(&custom).unwrap();
        assert_eq!(event.kind.event_type(), "worker-custom");
        assert_eq!(event.to_json()["x"], 1);
    }

    #[test]
    fn a_batch_is_a_list_of_events() {
        let body = json!([
            {"hostname":"h","timestamp":1.0,"type":"task-started","uuid":"a"},
            {"hostname":"h","timestamp":2.0,"type":"task-succeeded","uuid":"a","result":"5","runtime":0.1},
        ]);
        let events = Event::from_body(body.to_string().as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[1].kind, EventKind::TaskSucceeded(s) if s.result == "5"));
    }

    #[test]
    fn what_is_not_an_event_is_a_typed_error() {
        assert!(Event::from_body(b"nope").is_err());
        assert!(Event::from_json(&json!({"hostname":"h"})).is_err());
        let error = Event::from_json(&json!({"type":"task-started","timestamp":1.0})).unwrap_err();
        assert!(error.reason().contains("hostname"), "{error}");
    }
}

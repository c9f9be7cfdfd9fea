//! Task messages (Celery protocol v2): headers, properties and the
//! `[args, kwargs, embed]` body, written by callers and read by workers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::repr::{args_repr, kwargs_repr};
use super::{format_time, parse_time, process_name, CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON};
use crate::broker::{Message, Properties};

/// Everything needed to write one task message.
#[derive(Debug, Clone, Copy)]
pub struct TaskCall<'a> {
    /// Task id (also the `correlation_id`).
    pub id: &'a str,
    /// Registered task name.
    pub name: &'a str,
    /// Positional arguments, JSON-encoded.
    pub args: &'a [Box<RawValue>],
    /// Keyword arguments, JSON-encoded.
    pub kwargs: &'a [(String, Box<RawValue>)],
    /// Where results go (`None` when the caller ignores the result).
    pub reply_to: Option<&'a str>,
    /// Do not run before this time.
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this time: report REVOKED instead.
    pub expires: Option<DateTime<Utc>>,
    /// Message priority (0-255; queues honour up to their `x-max-priority`).
    pub priority: Option<u8>,
    /// Hard time limit in seconds.
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds.
    pub soft_time_limit: Option<f64>,
    /// The worker need not publish the result.
    pub ignore_result: bool,
    /// How many times this task was retried already.
    pub retries: u32,
    /// The first task of the workflow this task belongs to (defaults to `id`).
    pub root_id: Option<&'a str>,
    /// The task that sent this one.
    pub parent_id: Option<&'a str>,
}

/// Celery's task headers. Unknown headers are kept in `extra`, so a message
/// read and written again loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskHeaders {
    /// Language of the producer (`py`, `rust`).
    pub lang: Option<String>,
    /// Task name.
    pub task: Option<String>,
    /// Task id.
    pub id: Option<String>,
    /// Name shown instead of `task` in logs.
    pub shadow: Option<String>,
    /// ISO-8601 time before which the task must not run.
    pub eta: Option<String>,
    /// ISO-8601 time after which the task must not run.
    pub expires: Option<String>,
    /// Group id, for group members.
    pub group: Option<String>,
    /// Position in the group.
    pub group_index: Option<u64>,
    /// Times retried.
    pub retries: Option<u64>,
    /// `[hard, soft]` time limits in seconds.
    pub timelimit: Option<(Option<f64>, Option<f64>)>,
    /// Root task id of the workflow.
    pub root_id: Option<String>,
    /// Parent task id.
    pub parent_id: Option<String>,
    /// Python repr of the positional arguments.
    pub argsrepr: Option<String>,
    /// Python repr of the keyword arguments.
    pub kwargsrepr: Option<String>,
    /// `gen<pid>@<host>` of the producer.
    pub origin: Option<String>,
    /// The producer does not want the result.
    pub ignore_result: Option<bool>,
    /// How many times the task was replaced.
    pub replaced_task_nesting: Option<u64>,
    /// Names of stamped headers (Celery's stamping API).
    pub stamped_headers: Option<Value>,
    /// Stamps.
    pub stamps: Option<Value>,
    /// Headers this framework does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `gen<pid>@<host>`: this process as a producer.
fn origin() -> &'static str {
    static ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(|| format!("gen{}", process_name()))
}

/// Writes the task message for `call`.
pub fn encode_task(call: &TaskCall<'_>) -> Result<Message, serde_json::Error> {
    // Built as a map directly (not through `TaskHeaders` and
    // `serde_json::to_value`): this runs for every message published.
    let optional_time =
        |time: Option<DateTime<Utc>>| time.map_or(Value::Null, |t| Value::from(format_time(t)));
    let optional_seconds = |s: Option<f64>| s.map_or(Value::Null, Value::from);
    let mut headers = Map::new();
    headers.insert("lang".into(), Value::from("rust"));
    headers.insert("task".into(), Value::from(call.name));
    headers.insert("id".into(), Value::from(call.id));
    headers.insert("shadow".into(), Value::Null);
    headers.insert("eta".into(), optional_time(call.eta));
    headers.insert("expires".into(), optional_time(call.expires));
    headers.insert("group".into(), Value::Null);
    headers.insert("group_index".into(), Value::Null);
    headers.insert("retries".into(), Value::from(call.retries));
    headers.insert(
        "timelimit".into(),
        Value::Array(vec![
            optional_seconds(call.time_limit),
            optional_seconds(call.soft_time_limit),
        ]),
    );
    headers.insert(
        "root_id".into(),
        Value::from(call.root_id.unwrap_or(call.id)),
    );
    headers.insert(
        "parent_id".into(),
        call.parent_id.map_or(Value::Null, Value::from),
    );
    headers.insert("argsrepr".into(), Value::from(args_repr(call.args)));
    headers.insert("kwargsrepr".into(), Value::from(kwargs_repr(call.kwargs)));
    headers.insert("origin".into(), Value::from(origin()));
    headers.insert("ignore_result".into(), Value::from(call.ignore_result));
    headers.insert("replaced_task_nesting".into(), Value::from(0));
    headers.insert("stamped_headers".into(), Value::Null);
    headers.insert("stamps".into(), Value::Object(Map::new()));
    let body = encode_body(call.args, call.kwargs)?;
    Ok(Message {
        properties: Properties {
            content_type: Some(CONTENT_TYPE_JSON.into()),
            content_encoding: Some(CONTENT_ENCODING_UTF8.into()),
            correlation_id: Some(call.id.to_owned()),
            reply_to: call.reply_to.map(str::to_owned),
            persistent: true,
            priority: call.priority,
            expiration: None,
            headers,
        },
        body,
    })
}

/// `[args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`.
fn encode_body(
    args: &[Box<RawValue>],
    kwargs: &[(String, Box<RawValue>)],
) -> Result<Vec<u8>, serde_json::Error> {
    struct Kwargs<'a>(&'a [(String, Box<RawValue>)]);
    impl Serialize for Kwargs<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
    #[derive(Serialize)]
    struct Embed {
        callbacks: Option<()>,
        errbacks: Option<()>,
        chain: Option<()>,
        chord: Option<()>,
    }
    let embed = Embed {
        callbacks: None,
        errbacks: None,
        chain: None,
        chord: None,
    };
    let mut body = Vec::with_capacity(64 + args.iter().map(|a| a.get().len()).sum::<usize>());
    serde_json::to_writer(&mut body, &(args, Kwargs(kwargs), embed))?;
    Ok(body)
}

/// Why a message could not be read as a task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body is not JSON (only `application/json` is accepted, never pickle).
    #[error("unsupported content type `{0}` (only application/json is accepted)")]
    UnsupportedContentType(String),
    /// The body is not UTF-8 JSON.
    #[error("unsupported content encoding `{0}` (only utf-8 is accepted)")]
    UnsupportedContentEncoding(String),
    /// No `task` header: not a protocol v2 task message.
    #[error("the message has no `task` header (not a Celery protocol v2 task message)")]
    MissingTaskName,
    /// No `id` header and no `correlation_id`.
    #[error("the message has no task id")]
    MissingTaskId,
    /// Headers of the wrong types.
    #[error("malformed task headers: {0}")]
    Headers(serde_json::Error),
    /// The body is not `[args, kwargs, embed]`.
    #[error("malformed body (expected a JSON array [args, kwargs, embed]): {0}")]
    Body(serde_json::Error),
    /// `eta` or `expires` is not an ISO-8601 time.
    #[error("header `{name}` is not an ISO-8601 time: `{value}`")]
    Time {
        /// The header.
        name: &'static str,
        /// Its value.
        value: String,
    },
}

/// A task message, read.
#[derive(Debug)]
pub struct TaskRequest {
    /// Task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Positional arguments.
    pub args: Vec<Box<RawValue>>,
    /// Keyword arguments, in message order.
    pub kwargs: Vec<(String, Box<RawValue>)>,
    /// Callbacks, errbacks, chain and chord, as sent.
    pub embed: Option<Box<RawValue>>,
    /// Where to publish results.
    pub reply_to: Option<String>,
    /// Not before this time.
    pub eta: Option<DateTime<Utc>>,
    /// Not after this time.
    pub expires: Option<DateTime<Utc>>,
    /// Every header.
    pub headers: TaskHeaders,
}

impl TaskRequest {
    /// `[hard, soft]` limits in seconds, as sent.
    pub fn time_limits(&self) -> (Option<f64>, Option<f64>) {
        self.headers.timelimit.unwrap_or((None, None))
    }

    /// How many times the task was retried before this delivery.
    pub fn retries(&self) -> u32 {
        self.headers
            .retries
            .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX))
    }

    /// Whether the caller wants no result.
    pub fn ignore_result(&self) -> bool {
        self.headers.ignore_result.unwrap_or(false)
    }
}

/// What can be read of a message that is not a valid task: enough to log it
/// and, when possible, to tell the caller.
#[derive(Debug, Clone, Default)]
pub struct PartialRequest {
    /// Task id, when found.
    pub id: Option<String>,
    /// Task name, when found.
    pub name: Option<String>,
    /// Result queue, when given.
    pub reply_to: Option<String>,
}

impl PartialRequest {
    /// Reads what it can from any message.
    pub fn of(message: &Message) -> Self {
        let header = |key: &str| {
            message
                .properties
                .headers
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Self {
            id: header("id").or_else(|| message.properties.correlation_id.clone()),
            name: header("task"),
            reply_to: message.properties.reply_to.clone(),
        }
    }
}

/// Reads a task message.
pub fn decode_task(message: &Message) -> Result<TaskRequest, DecodeError> {
    let properties = &message.properties;
    match properties.content_type.as_deref() {
        Some(CONTENT_TYPE_JSON) | None => {}
        Some(other) => return Err(DecodeError::UnsupportedContentType(other.to_owned())),
    }
    match properties.content_encoding.as_deref() {
        Some(enc) if !enc.eq_ignore_ascii_case(CONTENT_ENCODING_UTF8) && enc != "utf8" => {
            return Err(DecodeError::UnsupportedContentEncoding(enc.to_owned()))
        }
        _ => {}
    }
    let headers: TaskHeaders =
        TaskHeaders::deserialize(&properties.headers).map_err(DecodeError::Headers)?;
    let name = headers.task.clone().ok_or(DecodeError::MissingTaskName)?;
    let id = headers
        .id
        .clone()
        .or_else(|| properties.correlation_id.clone())
        .ok_or(DecodeError::MissingTaskId)?;
    let time = |name: &'static str, value: &Option<String>| match value {
        None => Ok(None),
        Some(text) => parse_time(text).map(Some).ok_or_else(|| DecodeError::Time {
            name,
            value: text.clone(),
        }),
    };
    let eta = time("eta", &headers.eta)?;
    let expires = time("expires", &headers.expires)?;
    type Body = (
        Vec<Box<RawValue>>,
        indexmap_free::OrderedKwargs,
        Option<Box<RawValue>>,
    );
    let (args, kwargs, embed): Body =
        serde_json::from_slice(&message.body).map_err(DecodeError::Body)?;
    Ok(TaskRequest {
        id,
        name,
        args,
        kwargs: kwargs.0,
        embed,
        reply_to: properties.reply_to.clone(),
        eta,
        expires,
        headers,
    })
}

mod indexmap_free {
    //! Keyword arguments kept in message order without an extra map type.
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde::Deserialize;
    use serde_json::value::RawValue;
    use std::fmt;

    pub struct OrderedKwargs(pub Vec<(String, Box<RawValue>)>);

    impl<'de> Deserialize<'de> for OrderedKwargs {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct KwargsVisitor;
            impl<'de> Visitor<'de> for KwargsVisitor {
                type Value = OrderedKwargs;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object of keyword arguments")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                    while let Some(entry) = map.next_entry()? {
                        entries.push(entry);
                    }
                    Ok(OrderedKwargs(entries))
                }
            }
            deserializer.deserialize_map(KwargsVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn call<'a>(args: &'a [Box<RawValue>], kwargs: &'a [(String, Box<RawValue>)]) -> TaskCall<'a> {
        TaskCall {
            id: "id-1",
            name: "tasks.add",
            args,
            kwargs,
            reply_to: Some("replies"),
            eta: None,
            expires: None,
            priority: None,
            time_limit: Some(10.0),
            soft_time_limit: None,
            ignore_result: false,
            retries: 0,
            root_id: None,
            parent_id: None,
        }
    }

    #[test]
    fn encoded_messages_follow_protocol_v2() {
        let args = [raw("2"), raw("3")];
        let kwargs = [("z".to_owned(), raw("\"é\""))];
        let message = encode_task(&call(&args, &kwargs)).unwrap();
        let body: Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!([[2, 3], {"z": "é"}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
        );
        let h = &message.properties.headers;
        assert_eq!(h["lang"], "rust");
        assert_eq!(h["task"], "tasks.add");
        assert_eq!(h["id"], "id-1");
        assert_eq!(h["root_id"], "id-1");
        assert_eq!(h["parent_id"], Value::Null);
        assert_eq!(h["timelimit"], serde_json::json!([10.0, null]));
        assert_eq!(h["argsrepr"], "(2, 3)");
        assert_eq!(h["kwargsrepr"], "{'z': 'é'}");
        assert!(h["origin"].as_str().unwrap().starts_with("gen"));
        assert_eq!(message.properties.correlation_id.as_deref(), Some("id-1"));
        assert!(message.properties.persistent);
    }

    #[test]
    fn decoding_reads_back_what_encoding_wrote() {
        let args = [raw("2")];
        let kwargs = [("y".to_owned(), raw("3"))];
        let mut c = call(&args, &kwargs);
        let eta = parse_time("2030-01-01T00:00:00+00:00").unwrap();
        c.eta = Some(eta);
        let request = decode_task(&encode_task(&c).unwrap()).unwrap();
        assert_eq!(request.id, "id-1");
        assert_eq!(request.name, "tasks.add");
        assert_eq!(request.args[0].get(), "2");
        assert_eq!(request.kwargs[0].0, "y");
        assert_eq!(request.eta, Some(eta));
        assert_eq!(request.time_limits(), (Some(10.0), None));
        assert_eq!(request.reply_to.as_deref(), Some("replies"));
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let good = encode_task(&call(&[], &[])).unwrap();

        let mut m = good.clone();
        m.body = b"[[], {}]".to_vec();
        assert!(matches!(decode_task(&m), Err(DecodeError::Body(_))));
        m.body = b"{\"args\": []}".to_vec();
        assert!(matches!(decode_task(&m), Err(DecodeError::Body(_))));
        m.body = b"not json".to_vec();
        assert!(matches!(decode_task(&m), Err(DecodeError::Body(_))));

        let mut m = good.clone();
        m.properties.content_type = Some("application/x-python-serialize".into());
        assert!(matches!(
            decode_task(&m),
            Err(DecodeError::UnsupportedContentType(_))
        ));

        let mut m = good.clone();
        m.properties.headers.remove("task");
        assert!(matches!(decode_task(&m), Err(DecodeError::MissingTaskName)));

        let mut m = good.clone();
        m.properties
            .headers
            .insert("retries".into(), Value::from("many"));
        assert!(matches!(decode_task(&m), Err(DecodeError::Headers(_))));

        let mut m = good;
        m.properties
            .headers
            .insert("eta".into(), Value::from("soon"));
        assert!(matches!(
            decode_task(&m),
            Err(DecodeError::Time { name: "eta", .. })
        ));
    }
}

//! Task messages (Celery protocol v2): headers, properties and the
//! `[args, kwargs, embed]` body, written by callers and read by workers.

use chrono::{DateTime, Utc};
use lapin::types::{FieldArray, FieldTable};
use serde::Serialize;
use serde_json::value::RawValue;

use super::repr::{args_repr, kwargs_repr};
use super::{format_time, parse_time, process_name, CONTENT_ENCODING_UTF8, CONTENT_TYPE_JSON};
use crate::broker::headers::{as_integer, as_number, as_text, integer_value, text_value};
use crate::broker::{HeaderValue, Headers, Message, Properties};

/// The header that says when a message was published, in seconds since
/// the Unix epoch (a float, as Celery's event timestamps): what a worker's
/// queue-wait metric measures from. This framework's own; Celery's
/// messages carry none and Celery ignores it.
pub const PUBLISHED_AT: &str = "published_at";

/// `time` as seconds since the Unix epoch, to the microsecond.
pub fn unix_seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_micros() as f64 / 1e6
}

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

impl<'a> TaskCall<'a> {
    /// A call of task `name` as `id` with no arguments and nothing else
    /// set (no reply, no schedule, no limits, a root of its own): the base
    /// of a struct update that sets what differs.
    pub const fn plain(id: &'a str, name: &'a str) -> Self {
        Self {
            id,
            name,
            args: &[],
            kwargs: &[],
            reply_to: None,
            eta: None,
            expires: None,
            priority: None,
            time_limit: None,
            soft_time_limit: None,
            ignore_result: false,
            retries: 0,
            root_id: None,
            parent_id: None,
        }
    }
}

/// `gen<pid>@<host>`: this process as a producer.
fn origin() -> &'static str {
    static ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(|| format!("gen{}", process_name()))
}

/// Writes the task message for `call`.
pub fn encode_task(call: &TaskCall<'_>) -> Result<Message, serde_json::Error> {
    // The AMQP table is built directly: this runs for every message
    // published, and the headers travel in exactly these types.
    let optional_time = |time: Option<DateTime<Utc>>| {
        time.map_or(HeaderValue::Void, |t| text_value(&format_time(t)))
    };
    let optional_seconds = |s: Option<f64>| s.map_or(HeaderValue::Void, HeaderValue::Double);
    let optional_text = |text: Option<&str>| text.map_or(HeaderValue::Void, text_value);
    // In key order, as `Headers::from_sorted` requires.
    let headers = Headers::from_sorted([
        ("argsrepr", text_value(&args_repr(call.args))),
        ("eta", optional_time(call.eta)),
        ("expires", optional_time(call.expires)),
        ("group", HeaderValue::Void),
        ("group_index", HeaderValue::Void),
        ("id", text_value(call.id)),
        ("ignore_result", HeaderValue::Boolean(call.ignore_result)),
        ("kwargsrepr", text_value(&kwargs_repr(call.kwargs))),
        ("lang", text_value("rust")),
        ("origin", text_value(origin())),
        ("parent_id", optional_text(call.parent_id)),
        (
            PUBLISHED_AT,
            HeaderValue::Double(unix_seconds(crate::clock::now())),
        ),
        ("replaced_task_nesting", HeaderValue::LongInt(0)),
        ("retries", integer_value(i64::from(call.retries))),
        ("root_id", text_value(call.root_id.unwrap_or(call.id))),
        ("shadow", HeaderValue::Void),
        ("stamped_headers", HeaderValue::Void),
        ("stamps", HeaderValue::FieldTable(FieldTable::default())),
        ("task", text_value(call.name)),
        (
            "timelimit",
            HeaderValue::FieldArray(FieldArray::from(vec![
                optional_seconds(call.time_limit),
                optional_seconds(call.soft_time_limit),
            ])),
        ),
    ]);
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
    /// A header this framework reads has the wrong type.
    #[error("malformed task header `{name}`: expected {expected}")]
    Header {
        /// The header.
        name: &'static str,
        /// What it should hold.
        expected: &'static str,
    },
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
    /// The first task of the workflow (`root_id`; the task itself when absent).
    pub root_id: Option<String>,
    /// The task whose worker sent this one (`parent_id`).
    pub parent_id: Option<String>,
    /// The group this task is a member of (`group`).
    pub group_id: Option<String>,
    /// Its position in that group (`group_index`).
    pub group_index: Option<u32>,
    /// The headers that are not Celery's protocol headers nor the broker's
    /// (`x-...`): those a caller added (`Signature::header`, Celery's
    /// `apply_async(headers=...)`) and Celery's stamps, as JSON, in key order.
    pub extra_headers: Vec<(String, serde_json::Value)>,
    /// When the message was published (this framework's `published_at`
    /// header, seconds since the Unix epoch; Celery's messages carry none).
    pub published_at: Option<f64>,
    /// Times retried before this delivery.
    retries: u32,
    /// `[hard, soft]` limits in seconds.
    time_limits: (Option<f64>, Option<f64>),
    /// The caller wants no result.
    ignore_result: bool,
    /// It carries Celery stamps (a non-empty `stamps` table).
    stamped: bool,
    /// How many times the task was replaced on its way here.
    replaced_task_nesting: u32,
    /// `embed` holds a list or an object (some canvas part may be set):
    /// scanned once, at decode.
    embed_nested: bool,
}

impl TaskRequest {
    /// `[hard, soft]` limits in seconds, as sent.
    pub fn time_limits(&self) -> (Option<f64>, Option<f64>) {
        self.time_limits
    }

    /// How many times the task was retried before this delivery.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Whether the message's `embed` may carry canvas (it holds a list or
    /// an object; the common all-null `embed` does not), as read at decode.
    pub fn carries_canvas(&self) -> bool {
        self.embed_nested && self.embed.is_some()
    }

    /// Whether the caller wants no result.
    pub fn ignore_result(&self) -> bool {
        self.ignore_result
    }

    /// How many times the task was replaced on its way here (Celery's
    /// `replaced_task_nesting`; 0 when absent or malformed).
    pub fn replaced_task_nesting(&self) -> u32 {
        self.replaced_task_nesting
    }

    /// Whether the message carries Celery stamps (a non-empty `stamps`
    /// header), told at decode.
    pub fn carries_stamps(&self) -> bool {
        self.stamped
    }

    /// Moves the task's place in its workflow out of the request.
    pub fn take_lineage(&mut self) -> crate::Lineage {
        crate::Lineage {
            root_id: self.root_id.take(),
            parent_id: self.parent_id.take(),
            group_id: self.group_id.take(),
            group_index: self.group_index,
        }
    }

    /// Which canvas parts the message's `embed` carries (`callbacks`,
    /// `errbacks`, `chain`, `chord`: those present and neither `null` nor
    /// empty), in that order. An `embed` that is not a JSON object carries
    /// none.
    pub fn canvas_parts(&self) -> Vec<&'static str> {
        #[derive(serde::Deserialize)]
        struct Embed<'a> {
            #[serde(borrow, default)]
            callbacks: Option<&'a RawValue>,
            #[serde(borrow, default)]
            errbacks: Option<&'a RawValue>,
            #[serde(borrow, default)]
            chain: Option<&'a RawValue>,
            #[serde(borrow, default)]
            chord: Option<&'a RawValue>,
        }
        let Some(embed) = self.embed.as_ref().filter(|_| self.embed_nested) else {
            return Vec::new();
        };
        let Ok(embed) = serde_json::from_str::<Embed<'_>>(embed.get()) else {
            return Vec::new();
        };
        let carries = |part: Option<&RawValue>| {
            part.is_some_and(|raw| {
                let significant = raw.get().bytes().filter(|b| !b.is_ascii_whitespace());
                ![&b"null"[..], b"[]", b"{}"]
                    .iter()
                    .any(|empty| significant.clone().eq(empty.iter().copied()))
            })
        };
        [
            ("callbacks", embed.callbacks),
            ("errbacks", embed.errbacks),
            ("chain", embed.chain),
            ("chord", embed.chord),
        ]
        .into_iter()
        .filter(|(_, part)| carries(*part))
        .map(|(name, _)| name)
        .collect()
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
        let header = |key: &str| message.properties.headers.get_str(key).map(str::to_owned);
        Self {
            id: header("id").or_else(|| message.properties.correlation_id.clone()),
            name: header("task"),
            reply_to: message.properties.reply_to.clone(),
        }
    }
}

/// The headers a worker interprets, found in one walk over the table (a
/// lookup per header cost more than the walk: this runs for every delivery),
/// with their types checked when read; the others (`argsrepr`, `origin`,
/// `stamps`, ...) are informative and not checked. A `Void` value counts as
/// absent.
#[derive(Default)]
struct HeaderReader<'a> {
    task: Option<&'a HeaderValue>,
    id: Option<&'a HeaderValue>,
    eta: Option<&'a HeaderValue>,
    expires: Option<&'a HeaderValue>,
    retries: Option<&'a HeaderValue>,
    timelimit: Option<&'a HeaderValue>,
    ignore_result: Option<&'a HeaderValue>,
    root_id: Option<&'a HeaderValue>,
    parent_id: Option<&'a HeaderValue>,
    group: Option<&'a HeaderValue>,
    group_index: Option<&'a HeaderValue>,
    published_at: Option<&'a HeaderValue>,
    stamps: Option<&'a HeaderValue>,
    replaced_task_nesting: Option<&'a HeaderValue>,
    /// The headers that are neither protocol headers nor the broker's
    /// (`x-...`), as JSON, in key order.
    extras: Vec<(String, serde_json::Value)>,
}

impl<'a> HeaderReader<'a> {
    fn read(headers: &'a Headers) -> Self {
        let mut found = Self::default();
        for (key, value) in headers.iter() {
            let slot = match key {
                "task" => &mut found.task,
                "id" => &mut found.id,
                "eta" => &mut found.eta,
                "expires" => &mut found.expires,
                "retries" => &mut found.retries,
                "timelimit" => &mut found.timelimit,
                "ignore_result" => &mut found.ignore_result,
                "root_id" => &mut found.root_id,
                "parent_id" => &mut found.parent_id,
                "group" => &mut found.group,
                "group_index" => &mut found.group_index,
                PUBLISHED_AT => &mut found.published_at,
                "stamps" => &mut found.stamps,
                "replaced_task_nesting" => &mut found.replaced_task_nesting,
                _ if is_protocol_header(key) || key.starts_with("x-") => continue,
                _ => {
                    // Rare: allocates only for an extra header found.
                    if let Some(value) = headers.get_json(key) {
                        found.extras.push((key.to_owned(), value));
                    }
                    continue;
                }
            };
            if !matches!(value, HeaderValue::Void) {
                *slot = Some(value);
            }
        }
        found
    }

    fn text(
        value: Option<&'a HeaderValue>,
        name: &'static str,
    ) -> Result<Option<&'a str>, DecodeError> {
        let wrong = || DecodeError::Header {
            name,
            expected: "UTF-8 text",
        };
        value
            .map(|value| as_text(value).ok_or_else(wrong))
            .transpose()
    }

    fn count(value: Option<&HeaderValue>, name: &'static str) -> Result<u32, DecodeError> {
        match value {
            None => Ok(0),
            Some(value) => as_integer(value)
                .and_then(|n| u64::try_from(n).ok())
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .ok_or(DecodeError::Header {
                    name,
                    expected: "a non-negative integer",
                }),
        }
    }

    fn flag(value: Option<&HeaderValue>, name: &'static str) -> Result<bool, DecodeError> {
        match value {
            None => Ok(false),
            Some(HeaderValue::Boolean(flag)) => Ok(*flag),
            Some(_) => Err(DecodeError::Header {
                name,
                expected: "a boolean",
            }),
        }
    }

    fn time(
        value: Option<&'a HeaderValue>,
        name: &'static str,
    ) -> Result<Option<DateTime<Utc>>, DecodeError> {
        match Self::text(value, name)? {
            None => Ok(None),
            Some(text) => parse_time(text).map(Some).ok_or_else(|| DecodeError::Time {
                name,
                value: text.to_owned(),
            }),
        }
    }

    /// `timelimit`: `[hard, soft]`, each seconds or null.
    fn time_limits(&self) -> Result<(Option<f64>, Option<f64>), DecodeError> {
        const NAME: &str = "timelimit";
        let wrong = || DecodeError::Header {
            name: NAME,
            expected: "[hard, soft] (numbers of seconds or null)",
        };
        let seconds = |value: &HeaderValue| match value {
            HeaderValue::Void => Ok(None),
            other => as_number(other).map(Some).ok_or_else(wrong),
        };
        match self.timelimit {
            None => Ok((None, None)),
            Some(HeaderValue::FieldArray(items)) => match items.as_slice() {
                [hard, soft] => Ok((seconds(hard)?, seconds(soft)?)),
                _ => Err(wrong()),
            },
            Some(_) => Err(wrong()),
        }
    }
}

/// The message of the next run of a task that failed: the same message with
/// `retries` and an `eta` of `eta` (the worker publishes it through the delay
/// levels; eager mode runs it at once).
pub fn retried_copy(message: &Message, retries: u32, eta: DateTime<Utc>) -> Message {
    let mut again = message.clone();
    let headers = &mut again.properties.headers;
    headers.insert("retries", integer_value(i64::from(retries)));
    headers.insert(
        PUBLISHED_AT,
        HeaderValue::Double(unix_seconds(crate::clock::now())),
    );
    headers.insert_str("eta", &format_time(eta));
    again
}

/// [`retried_copy`], with the arguments `changes` gives (Celery's
/// `self.retry(args=..., kwargs=...)`): the body rewritten with them (its
/// `embed` kept), and its `argsrepr` / `kwargsrepr` headers.
pub fn retried_copy_with(
    message: &Message,
    retries: u32,
    eta: DateTime<Utc>,
    changes: &crate::Retry,
) -> Result<Message, DecodeError> {
    let mut again = retried_copy(message, retries, eta);
    if !changes.changes_arguments() {
        return Ok(again);
    }
    type Body = (
        Vec<Box<RawValue>>,
        Vec<(String, Box<RawValue>)>,
        Option<Box<RawValue>>,
    );
    let (args, kwargs, embed): (
        Vec<Box<RawValue>>,
        indexmap_free::OrderedKwargs,
        Option<Box<RawValue>>,
    ) = serde_json::from_slice(&message.body).map_err(DecodeError::Body)?;
    let raw = |value: &serde_json::Value| serde_json::value::to_raw_value(value);
    let args = match changes.new_args() {
        Some(new) => new.iter().map(raw).collect::<Result<_, _>>(),
        None => Ok(args),
    }
    .map_err(DecodeError::Body)?;
    let kwargs = match changes.new_kwargs() {
        Some(new) => new
            .iter()
            .map(|(key, value)| Ok((key.clone(), raw(value)?)))
            .collect::<Result<_, serde_json::Error>>(),
        None => Ok(kwargs.0),
    }
    .map_err(DecodeError::Body)?;
    let body: Body = (args, kwargs, embed);
    struct Kwargs<'a>(&'a [(String, Box<RawValue>)]);
    impl Serialize for Kwargs<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
    again.body =
        serde_json::to_vec(&(&body.0, Kwargs(&body.1), &body.2)).map_err(DecodeError::Body)?;
    let headers = &mut again.properties.headers;
    headers.insert("argsrepr", text_value(&args_repr(&body.0)));
    headers.insert("kwargsrepr", text_value(&kwargs_repr(&body.1)));
    Ok(again)
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
    let mut headers = HeaderReader::read(&properties.headers);
    let name = HeaderReader::text(headers.task, "task")?.ok_or(DecodeError::MissingTaskName)?;
    let id = match HeaderReader::text(headers.id, "id")? {
        Some(id) => id.to_owned(),
        None => properties
            .correlation_id
            .clone()
            .ok_or(DecodeError::MissingTaskId)?,
    };
    let eta = HeaderReader::time(headers.eta, "eta")?;
    let expires = HeaderReader::time(headers.expires, "expires")?;
    let retries = HeaderReader::count(headers.retries, "retries")?;
    let time_limits = headers.time_limits()?;
    let ignore_result = HeaderReader::flag(headers.ignore_result, "ignore_result")?;
    // Informative for this worker: a malformed one is read as absent rather
    // than making the task unrunnable.
    let lineage = |value, name| {
        HeaderReader::text(value, name)
            .ok()
            .flatten()
            .map(str::to_owned)
    };
    // The root is the task itself when it starts its workflow (Celery sends
    // its own id): kept only when it names another task.
    let root_id = HeaderReader::text(headers.root_id, "root_id")
        .ok()
        .flatten()
        .filter(|root| *root != id)
        .map(str::to_owned);
    let extra_headers = std::mem::take(&mut headers.extras);
    let group_index = headers
        .group_index
        .and_then(as_integer)
        .and_then(|n| u32::try_from(n).ok());
    type Body = (
        Vec<Box<RawValue>>,
        indexmap_free::OrderedKwargs,
        Option<Box<RawValue>>,
    );
    let (args, kwargs, embed): Body =
        serde_json::from_slice(&message.body).map_err(DecodeError::Body)?;
    Ok(TaskRequest {
        id,
        name: name.to_owned(),
        args,
        kwargs: kwargs.0,
        embed_nested: embed.as_deref().is_some_and(|embed| is_nested(embed.get())),
        embed,
        reply_to: properties.reply_to.clone(),
        eta,
        expires,
        root_id,
        parent_id: lineage(headers.parent_id, "parent_id"),
        group_id: lineage(headers.group, "group"),
        group_index,
        extra_headers,
        published_at: headers.published_at.and_then(as_number),
        replaced_task_nesting: headers
            .replaced_task_nesting
            .and_then(as_integer)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        stamped: matches!(headers.stamps, Some(HeaderValue::FieldTable(table)) if !table.inner().is_empty()),
        retries,
        time_limits,
        ignore_result,
    })
}

/// Whether a JSON object holds a list or an object: the common case of an
/// `embed`, every part null, has none, and is told by a byte scan instead of
/// a parse on every delivery.
fn is_nested(embed: &str) -> bool {
    // The all-null `embed` as this framework (compact) and Celery (Python's
    // separators) write it: one comparison, cheaper than the scan.
    const ALL_NULL: [&str; 2] = [
        r#"{"callbacks":null,"errbacks":null,"chain":null,"chord":null}"#,
        r#"{"callbacks": null, "errbacks": null, "chain": null, "chord": null}"#,
    ];
    if ALL_NULL.contains(&embed) {
        return false;
    }
    let bytes = embed.trim_ascii_start().as_bytes();
    bytes
        .get(1..)
        .unwrap_or_default()
        .iter()
        .any(|byte| matches!(byte, b'[' | b'{'))
}

/// Whether `key` is one of Celery's protocol v2 headers (a `match`, which
/// the compiler turns into a length switch: this runs for every header of
/// every delivery).
fn is_protocol_header(key: &str) -> bool {
    matches!(
        key,
        "argsrepr"
            | "eta"
            | "expires"
            | "group"
            | "group_index"
            | "id"
            | "ignore_result"
            | "kwargsrepr"
            | "lang"
            | "origin"
            | "parent_id"
            | PUBLISHED_AT
            | "replaced_task_nesting"
            | "retries"
            | "root_id"
            | "shadow"
            | "stamped_headers"
            | "stamps"
            | "task"
            | "timelimit"
    )
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
    use serde_json::Value;

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
        let h = message.properties.headers.to_json();
        assert_eq!(h["lang"], "rust");
        assert_eq!(h["task"], "tasks.add");
        assert_eq!(h["id"], "id-1");
        assert_eq!(h["root_id"], "id-1");
        assert_eq!(h["parent_id"], Value::Null);
        assert_eq!(h["timelimit"], serde_json::json!([10.0, null]));
        assert_eq!(h["argsrepr"], "(2, 3)");
        assert_eq!(h["kwargsrepr"], "{'z': 'é'}");
        assert!(h["origin"].as_str().unwrap().starts_with("gen"));
        assert_eq!(h["retries"], 0);
        assert_eq!(h["ignore_result"], false);
        assert_eq!(message.properties.correlation_id.as_deref(), Some("id-1"));
        assert!(message.properties.persistent);
    }

    #[test]
    fn canvas_parts_name_what_the_embed_carries() {
        let with_embed = |embed: &str| {
            let mut message = encode_task(&call(&[], &[])).unwrap();
            message.body = format!("[[], {{}}, {embed}]").into_bytes();
            decode_task(&message).unwrap()
        };
        assert!(with_embed("null").canvas_parts().is_empty());
        assert!(
            with_embed(r#"{"callbacks": null, "errbacks": [], "chain": null, "chord": null}"#)
                .canvas_parts()
                .is_empty()
        );
        let chain = r#"{"callbacks": null, "errbacks": null, "chord": null,
            "chain": [{"task": "tasks.add", "args": [10], "kwargs": {}, "options": {}}]}"#;
        assert_eq!(with_embed(chain).canvas_parts(), ["chain"]);
        let all = r#"{"callbacks": [{"task": "a"}], "errbacks": [{"task": "b"}],
            "chain": [{"task": "c"}], "chord": {"task": "d"}}"#;
        assert_eq!(
            with_embed(all).canvas_parts(),
            ["callbacks", "errbacks", "chain", "chord"]
        );
        assert!(encode_and_decode_plain().canvas_parts().is_empty());
    }

    #[test]
    fn an_all_null_embed_is_told_without_a_scan_and_as_the_scan_would() {
        for all_null in [
            r#"{"callbacks":null,"errbacks":null,"chain":null,"chord":null}"#,
            r#"{"callbacks": null, "errbacks": null, "chain": null, "chord": null}"#,
            r#" {"callbacks": null, "chord": null}"#,
            "null",
        ] {
            assert!(!is_nested(all_null), "{all_null}");
        }
        assert!(is_nested(r#"{"callbacks": [], "chain": null}"#));
        assert!(is_nested(r#"{"chord": {"task": "t"}}"#));
    }

    #[test]
    fn headers_are_read_in_one_walk_with_extras_and_void_as_absent() {
        let mut message = encode_task(&call(&[], &[])).unwrap();
        let headers = &mut message.properties.headers;
        headers.insert_str("root_id", "root-1");
        headers.insert_str("parent_id", "parent-1");
        headers.insert_str("group", "group-1");
        headers.insert("group_index", HeaderValue::LongInt(2));
        headers.insert("eta", HeaderValue::Void);
        headers.insert_str("a-caller-header", "first");
        headers.insert("zz", HeaderValue::Boolean(true));
        headers.insert_str("x-death", "broker's");
        let request = decode_task(&message).unwrap();
        assert_eq!(request.root_id.as_deref(), Some("root-1"));
        assert_eq!(request.parent_id.as_deref(), Some("parent-1"));
        assert_eq!(request.group_id.as_deref(), Some("group-1"));
        assert_eq!(request.group_index, Some(2));
        assert_eq!(request.eta, None);
        assert_eq!(
            request.extra_headers,
            [
                ("a-caller-header".to_owned(), serde_json::json!("first")),
                ("zz".to_owned(), serde_json::json!(true)),
            ]
        );
        // Stamps and nesting are told at decode (Celery's empty table: none).
        assert!(!request.carries_stamps());
        assert_eq!(request.replaced_task_nesting(), 0);
        let headers = &mut message.properties.headers;
        headers.insert_json("stamps", &serde_json::json!({"batch": "b1"}));
        headers.insert("replaced_task_nesting", HeaderValue::LongInt(2));
        let stamped = decode_task(&message).unwrap();
        assert!(stamped.carries_stamps());
        assert_eq!(stamped.replaced_task_nesting(), 2);
        // A root naming the task itself is not kept.
        message.properties.headers.insert_str("root_id", "id-1");
        assert_eq!(decode_task(&message).unwrap().root_id, None);
        // A Void id is absent: the correlation id names the task.
        message.properties.headers.insert("id", HeaderValue::Void);
        message.properties.correlation_id = Some("from-properties".into());
        let request = decode_task(&message).unwrap();
        assert_eq!(request.id, "from-properties");
        assert_eq!(request.root_id.as_deref(), Some("id-1"));
    }

    #[test]
    fn a_message_says_when_it_was_published_and_a_retry_renews_it() {
        let before = unix_seconds(crate::clock::now());
        let message = encode_task(&call(&[], &[])).unwrap();
        let published = decode_task(&message).unwrap().published_at.unwrap();
        assert!(published >= before && published <= unix_seconds(crate::clock::now()));
        let mut retried = retried_copy(&message, 1, Utc::now());
        retried
            .properties
            .headers
            .insert(PUBLISHED_AT, HeaderValue::Double(1.5));
        assert_eq!(decode_task(&retried).unwrap().published_at, Some(1.5));
        let renewed = retried_copy(&retried, 2, Utc::now());
        assert!(decode_task(&renewed).unwrap().published_at.unwrap() >= published);
        // Celery's messages carry none; a malformed one reads as none.
        retried.properties.headers.remove(PUBLISHED_AT);
        assert_eq!(decode_task(&retried).unwrap().published_at, None);
        retried.properties.headers.insert_str(PUBLISHED_AT, "noon");
        assert_eq!(decode_task(&retried).unwrap().published_at, None);
    }

    fn encode_and_decode_plain() -> TaskRequest {
        decode_task(&encode_task(&call(&[], &[])).unwrap()).unwrap()
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
        m.properties.headers.insert_str("retries", "many");
        assert!(matches!(
            decode_task(&m),
            Err(DecodeError::Header {
                name: "retries",
                ..
            })
        ));

        let mut m = good.clone();
        m.properties
            .headers
            .insert_json("timelimit", &serde_json::json!([1.0]));
        assert!(matches!(
            decode_task(&m),
            Err(DecodeError::Header {
                name: "timelimit",
                ..
            })
        ));

        let mut m = good;
        m.properties.headers.insert_str("eta", "soon");
        assert!(matches!(
            decode_task(&m),
            Err(DecodeError::Time { name: "eta", .. })
        ));
    }
}

//! Celery canvas in a task message's `embed` (callbacks, errbacks, chain,
//! chord): reading it, and the messages that follow a task as Celery's
//! worker sends them (`celery/app/trace.py`): after a success the callbacks
//! (several as a group of their own) and then the next chain step, the
//! result in front of their arguments unless immutable; after a failure the
//! errbacks with the failed task's id, and a FAILURE for every remaining
//! chain step. Whoever runs the task sends them (a worker publishes them,
//! eager mode runs them inline).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::broker::headers::{integer_value, text_value};
use crate::broker::Message;
use crate::failed_task::{failure_header, FAILURE_HEADER};
use crate::protocol::task_message::{encode_task, TaskCall, TaskRequest};
use crate::{Registry, TaskError};

mod replacement;

pub use replacement::{replacement, ACCUMULATE_TASK};

/// A message's `embed`, read.
#[derive(Deserialize, Default)]
pub struct Embed {
    #[serde(default)]
    callbacks: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    errbacks: Option<Vec<Box<RawValue>>>,
    /// The remaining steps, the next one last.
    #[serde(default)]
    chain: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    chord: Option<Box<RawValue>>,
}

/// A signature in Celery's dict form.
#[derive(Deserialize)]
struct SignatureDict {
    task: String,
    #[serde(default)]
    args: Vec<Box<RawValue>>,
    #[serde(default)]
    kwargs: serde_json::Map<String, Value>,
    #[serde(default)]
    options: SignatureOptions,
    #[serde(default)]
    subtask_type: Option<String>,
    #[serde(default)]
    immutable: bool,
}

#[derive(Deserialize, Default)]
struct SignatureOptions {
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    priority: Option<u8>,
    /// Its own callbacks (a chain step's `link`).
    #[serde(default)]
    link: Option<Box<RawValue>>,
    /// Its own errbacks (a chain step's `link_error`).
    #[serde(default)]
    link_error: Option<Box<RawValue>>,
    /// The steps that follow it, the next one last (a chord body inside a
    /// chain carries the rest of the chain here).
    #[serde(default)]
    chain: Option<Vec<Box<RawValue>>>,
    /// The group it belongs to (a chord body's: its header's group).
    #[serde(default)]
    group_id: Option<String>,
    /// Its place in that group.
    #[serde(default)]
    group_index: Option<usize>,
    /// The chord body it is a header part of (the last step of a chain
    /// that is a header part, or that replaced one).
    #[serde(default)]
    chord: Option<Box<RawValue>>,
    /// Extra message headers (a chord's join queue, carried to the step
    /// that replaced a part).
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    /// Seconds to wait, from when it is published.
    #[serde(default)]
    countdown: Option<f64>,
    /// When to run (ISO 8601).
    #[serde(default)]
    eta: Option<String>,
    /// Seconds from when it is published, or a time (ISO 8601).
    #[serde(default)]
    expires: Option<Value>,
    /// Hard time limit, seconds.
    #[serde(default)]
    time_limit: Option<f64>,
    /// Soft time limit, seconds.
    #[serde(default)]
    soft_time_limit: Option<f64>,
}

impl SignatureOptions {
    /// When it may run and when it expires, from its `eta` / `countdown` and
    /// `expires` (seconds from now or a time), as Celery's `apply_async`
    /// reads them when the worker publishes it; unreadable values are left
    /// out.
    fn schedule(&self) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let now = crate::clock::now();
        let after = |secs: f64| {
            let delay = std::time::Duration::try_from_secs_f64(secs).ok()?;
            Some(now + chrono::Duration::from_std(delay).ok()?)
        };
        let time = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|time| time.with_timezone(&Utc))
        };
        let eta = match &self.eta {
            Some(eta) => time(eta),
            None => self.countdown.and_then(after),
        };
        let expires = match &self.expires {
            Some(Value::String(at)) => time(at),
            Some(secs) => secs.as_f64().and_then(after),
            None => None,
        };
        (eta, expires)
    }
}

/// The task a follow-up descends from: its parent and the root of the tree.
#[derive(Clone, Copy)]
struct Parent<'a> {
    id: &'a str,
    root_id: &'a str,
}

impl<'a> Parent<'a> {
    fn of(request: &'a TaskRequest) -> Self {
        Self {
            id: &request.id,
            root_id: request.root_id.as_deref().unwrap_or(&request.id),
        }
    }
}

/// A task message that follows the one that ran.
pub struct FollowUp {
    /// The task it calls.
    pub task: String,
    /// The queue its signature names, if any (else: the task's own queue,
    /// else the app's default).
    pub queue: Option<String>,
    /// The message, ready to publish.
    pub message: Message,
    /// A chord this message starts (on its first header part): to write to
    /// the result backend, or to set up its join on the broker, before the
    /// message is published (as Celery's client writes the size before it
    /// publishes a chord's header).
    pub chord_start: Option<ChordStart>,
    /// The group id of the chord this message is a header part of.
    pub chord_group: Option<String>,
}

/// A chord a worker starts (a `celery.chord` in a chain or a callback).
pub struct ChordStart {
    /// Its group id.
    pub group_id: String,
    /// How many header parts it has.
    pub size: usize,
    /// Its body, frozen (task id, group), carrying the steps after it.
    pub body: Box<RawValue>,
}

/// A chord's body as its header parts carry it: a signature in Celery's
/// dict form, frozen with its task id (and reply queue).
#[derive(Clone, Copy)]
pub struct ChordBody<'a> {
    raw: &'a RawValue,
}

impl<'a> ChordBody<'a> {
    /// The body `raw` (a signature dict).
    pub fn new(raw: &'a RawValue) -> Self {
        Self { raw }
    }

    /// The task it calls, if it decodes.
    pub fn task(&self) -> Option<String> {
        decode(self.raw).ok().map(|body| body.task)
    }

    /// The queue its options name, if any.
    pub fn queue(&self) -> Option<String> {
        decode(self.raw).ok()?.options.queue
    }

    /// The body's message once the header is complete: the header's values
    /// (in header order, `values`) in front of its arguments unless
    /// immutable, in the header's group `group_id`, its parent the part
    /// `parent_id` that completed the header, in the tree `root_id`.
    pub fn message(
        &self,
        parent_id: &str,
        root_id: &str,
        group_id: &str,
        values: &RawValue,
    ) -> Result<FollowUp, String> {
        let body = decode(self.raw)?;
        let group = body.options.group_id.as_deref().unwrap_or(group_id);
        let rest = body.options.chain.as_deref().unwrap_or_default();
        let parent = Parent {
            id: parent_id,
            root_id,
        };
        let member = Some((group, body.options.group_index));
        step(parent, &body, Some(values), rest, member, None)
    }

    /// `(task_id, reply_to)` of the body and of the chain steps after it
    /// (next first), told FAILURE when a part failed (Celery's
    /// `ChordError`): none of them will run.
    pub fn callers(&self) -> Vec<(String, Option<String>)> {
        let Ok(body) = decode(self.raw) else {
            return Vec::new();
        };
        let steps = body.options.chain.as_deref().unwrap_or_default();
        std::iter::once((body.options.task_id, body.options.reply_to))
            .chain(
                steps
                    .iter()
                    .rev()
                    .filter_map(|raw| decode(raw).ok())
                    .map(|step| (step.options.task_id, step.options.reply_to)),
            )
            .filter_map(|(id, reply_to)| Some((id?, reply_to)))
            .collect()
    }

    /// The body's errbacks after a part failed (`reason`, the body's
    /// `ChordError`), each with the body's id as its argument, the body as
    /// parent and root, in a new group (as Celery's `chord_error_from_stack`
    /// calls them), and the failure in their `task_failure` header (which
    /// [`FailedTask`](crate::FailedTask) reads).
    pub fn errbacks(&self, reason: &str) -> Result<Vec<FollowUp>, String> {
        let body = decode(self.raw)?;
        let Some(body_id) = body.options.task_id.as_deref() else {
            return Ok(Vec::new());
        };
        let Some(link_error) = body.options.link_error.as_deref() else {
            return Ok(Vec::new());
        };
        let errbacks: Vec<Box<RawValue>> = match serde_json::from_str(link_error.get()) {
            Ok(list) => list,
            // A single signature rather than a list.
            Err(_) => vec![link_error.to_owned()],
        };
        let failed_id = serde_json::value::to_raw_value(body_id).map_err(|e| e.to_string())?;
        let parent = Parent {
            id: body_id,
            root_id: body_id,
        };
        let group = uuid_string();
        let mut follow = Vec::with_capacity(errbacks.len());
        for (index, raw) in errbacks.iter().enumerate() {
            let member = Some((group.as_str(), Some(index)));
            follow.extend(apply(parent, raw, Some(&failed_id), &[], member)?);
        }
        let error = TaskError::new("ChordError", reason);
        tell_failure(&mut follow, body_id, &error);
        Ok(follow)
    }
}

impl FollowUp {
    /// The queue it goes to: the one its signature names, else its task's
    /// declared queue in `registry`, else `default_queue`.
    pub fn queue_in(&self, registry: &Registry, default_queue: &str) -> String {
        self.queue
            .clone()
            .or_else(|| registry.get(&self.task)?.options.queue.map(str::to_owned))
            .unwrap_or_else(|| default_queue.to_owned())
    }
}

impl Embed {
    /// The canvas `request` carries, if any (the common case, none, costs
    /// nothing: it was told at decode).
    pub fn of(request: &TaskRequest) -> Option<Embed> {
        if !request.carries_canvas() || request.canvas_parts().is_empty() {
            return None;
        }
        serde_json::from_str(request.embed.as_deref()?.get()).ok()
    }

    fn callbacks(&self) -> &[Box<RawValue>] {
        self.callbacks.as_deref().unwrap_or_default()
    }

    fn errbacks(&self) -> &[Box<RawValue>] {
        self.errbacks.as_deref().unwrap_or_default()
    }

    fn chain(&self) -> &[Box<RawValue>] {
        self.chain.as_deref().unwrap_or_default()
    }

    /// The chord body, when the message is a header part of a chord.
    fn chord(&self) -> Option<&RawValue> {
        self.chord.as_deref().filter(|c| c.get().trim() != "null")
    }

    /// Whether the message is a header part of a chord (its `chord` holds
    /// the body, which the part that completes the header publishes).
    pub fn is_chord_part(&self) -> bool {
        self.chord().is_some()
    }

    /// What cannot run here, if anything: a chord header part when
    /// `part_joined` is off (nothing here joins its chord), a chord nested in
    /// a chain or callback when `nested_chords` is off (nothing here could
    /// join it), a shape Celery never sends (a group followed by more chain
    /// steps, which Celery turns into a chord; a chord whose header holds a
    /// group, chain or chord, or whose body is not a plain task), or a
    /// signature that does not decode.
    pub fn unsupported(&self, part_joined: bool, nested_chords: bool) -> Option<String> {
        if let Some(body) = self.chord() {
            if !part_joined {
                return Some(NO_CHORDS.to_owned());
            }
            if let Some(problem) = check_chord_body(body) {
                return Some(problem);
            }
        }
        let chain = self.chain();
        for (position, raw) in chain.iter().enumerate() {
            // The next step is the last element: only it may be a group.
            let last_step = position == 0;
            if let Some(problem) = check(raw, nested_chords, last_step) {
                return Some(problem);
            }
        }
        self.callbacks()
            .iter()
            .chain(self.errbacks())
            .find_map(|raw| check(raw, nested_chords, true))
    }

    /// `(task_id, reply_to)` of every remaining chain step that has them,
    /// next first (`default_reply_to` for a step without its own).
    pub fn chain_callers(&self, default_reply_to: Option<&str>) -> Vec<(String, String)> {
        self.chain()
            .iter()
            .rev()
            .filter_map(|raw| serde_json::from_str::<SignatureDict>(raw.get()).ok())
            .filter_map(|sig| {
                let reply_to = sig
                    .options
                    .reply_to
                    .or_else(|| default_reply_to.map(str::to_owned))?;
                Some((sig.options.task_id?, reply_to))
            })
            .collect()
    }

    /// What follows a success of `request` that returned `value`, in
    /// Celery's order: the callbacks, then the next chain step.
    pub fn after_success(
        &self,
        request: &TaskRequest,
        value: &RawValue,
    ) -> Result<Vec<FollowUp>, String> {
        let callbacks = self.callbacks();
        let mut follow = Vec::with_capacity(callbacks.len() + 1);
        // Several callbacks go out as a group of their own (a callback that
        // is a group keeps its own).
        let group = (callbacks.len() > 1).then(uuid_string);
        for (index, raw) in callbacks.iter().enumerate() {
            let member = group.as_deref().map(|id| (id, Some(index)));
            follow.extend(apply(Parent::of(request), raw, Some(value), &[], member)?);
        }
        if let Some((next, rest)) = self.chain().split_last() {
            follow.extend(apply(Parent::of(request), next, Some(value), rest, None)?);
        }
        Ok(follow)
    }

    /// The chord body, when the message is a header part of a chord.
    pub fn chord_body(&self) -> Option<ChordBody<'_>> {
        self.chord().map(ChordBody::new)
    }

    /// The errbacks of a failure of `request` with `error`, each with the
    /// failed task's id as its first argument and the failure in its
    /// `task_failure` header (which [`FailedTask`](crate::FailedTask) reads).
    pub fn after_failure(
        &self,
        request: &TaskRequest,
        error: &TaskError,
    ) -> Result<Vec<FollowUp>, String> {
        let failed_id = serde_json::value::to_raw_value(&request.id).map_err(|e| e.to_string())?;
        let errbacks = self.errbacks();
        let group = (!errbacks.is_empty()).then(uuid_string);
        let mut follow = Vec::with_capacity(errbacks.len());
        for (index, raw) in errbacks.iter().enumerate() {
            let member = group.as_deref().map(|id| (id, Some(index)));
            follow.extend(apply(
                Parent::of(request),
                raw,
                Some(&failed_id),
                &[],
                member,
            )?);
        }
        tell_failure(&mut follow, &request.id, error);
        Ok(follow)
    }
}

/// Puts the failure of `task_id` with `error` in the [`FAILURE_HEADER`] of
/// each errback message in `errbacks`, for errbacks that take a
/// [`FailedTask`](crate::FailedTask) (Python ones ignore it).
fn tell_failure(errbacks: &mut [FollowUp], task_id: &str, error: &TaskError) {
    if errbacks.is_empty() {
        return;
    }
    let header = failure_header(task_id, error);
    for errback in errbacks {
        errback
            .message
            .properties
            .headers
            .insert_json(FAILURE_HEADER, &header);
    }
}

/// Why a chord cannot run without a backend that joins it.
const NO_CHORDS: &str =
    "a chord that nothing here joins (a chord part needs the result backend its chord was sent with)";

/// What of signature `raw` (in a chain, a callback or an errback) cannot
/// run here; `last_step`: nothing follows it in its chain.
fn check(raw: &RawValue, chords: bool, last_step: bool) -> Option<String> {
    let sig = match decode(raw) {
        Ok(sig) => sig,
        Err(error) => return Some(error),
    };
    let members = match sig.subtask_type.as_deref() {
        None => return None,
        Some("group") if !last_step => {
            return Some(
                "a group followed by more chain steps (Celery sends a chord there)".to_owned(),
            )
        }
        Some("chord") if !chords => return Some(NO_CHORDS.to_owned()),
        Some("group" | "chain") => Members::Tasks,
        Some("chord") => Members::Header,
        Some(other) => return Some(format!("a signature of unknown type `{other}`")),
    };
    let nested = match Nested::of(raw) {
        Ok(nested) => nested,
        Err(error) => return Some(error),
    };
    let tasks = match nested.members(members) {
        Ok(tasks) => tasks,
        Err(error) => return Some(error),
    };
    match members {
        Members::Tasks => {
            let count = tasks.len();
            // In a chain only the last member may be a group; in a group
            // each member ends its own line.
            let is_chain = sig.subtask_type.as_deref() == Some("chain");
            tasks.iter().enumerate().find_map(|(i, task)| {
                check(task, chords, !is_chain || (last_step && i + 1 == count))
            })
        }
        Members::Header => tasks
            .iter()
            .find_map(|task| match decode(task) {
                Ok(part) => part
                    .subtask_type
                    .map(|kind| format!("a chord whose header holds a {kind}")),
                Err(error) => Some(error),
            })
            .or_else(|| match nested.kwargs.body.as_deref() {
                Some(body) => check_chord_body(body),
                None => Some("a chord without a body".to_owned()),
            }),
    }
}

/// What of a chord's body cannot run here: it must be a plain task.
fn check_chord_body(body: &RawValue) -> Option<String> {
    match decode(body) {
        Ok(sig) if sig.subtask_type.is_none() => None,
        Ok(sig) => Some(format!(
            "a chord whose body is a {}",
            sig.subtask_type.unwrap_or_default()
        )),
        Err(error) => Some(error),
    }
}

/// Which members of a nested signature to read.
#[derive(Clone, Copy)]
enum Members {
    /// A group's or a chain's `kwargs.tasks`.
    Tasks,
    /// A chord's header: `kwargs.header`, a `celery.group` dict or a list.
    Header,
}

/// The `kwargs` of a group, chain or chord in Celery's dict form.
#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    kwargs: NestedKwargs,
}

#[derive(Deserialize, Default)]
struct NestedKwargs {
    #[serde(default)]
    tasks: Option<Box<RawValue>>,
    #[serde(default)]
    header: Option<Box<RawValue>>,
    #[serde(default)]
    body: Option<Box<RawValue>>,
}

impl Nested {
    fn of(raw: &RawValue) -> Result<Self, String> {
        serde_json::from_str(raw.get())
            .map_err(|error| format!("a group, chain or chord does not decode: {error}"))
    }

    /// The member signatures, in order.
    fn members(&self, what: Members) -> Result<Vec<Box<RawValue>>, String> {
        let list = |raw: &RawValue| {
            serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())
                .map_err(|error| format!("the members of a group or chain do not decode: {error}"))
        };
        match what {
            Members::Tasks => self.kwargs.tasks.as_deref().map_or(Ok(Vec::new()), list),
            Members::Header => {
                let Some(header) = self.kwargs.header.as_deref() else {
                    return Ok(Vec::new());
                };
                if header.get().trim_start().starts_with('[') {
                    list(header)
                } else {
                    Nested::of(header)?.members(Members::Tasks)
                }
            }
        }
    }

    /// The group id of a chord: its header group's frozen id, else the
    /// chord's own.
    fn chord_group_id(&self, chord: &SignatureDict) -> Option<String> {
        let header_id = self
            .kwargs
            .header
            .as_deref()
            .and_then(|header| decode(header).ok())
            .and_then(|header| header.options.task_id);
        header_id.or_else(|| chord.options.task_id.clone())
    }
}

/// Signature `raw` (a plain task, or a group, chain or chord, as Celery's
/// worker applies them) as the messages that follow `parent`: `first` in
/// front of the arguments (of each member of a group or chord header, of
/// the first step of a chain), `chain` as the steps after it, in group
/// `member` (id, index) if given.
fn apply(
    parent: Parent<'_>,
    raw: &RawValue,
    first: Option<&RawValue>,
    chain: &[Box<RawValue>],
    member: Option<(&str, Option<usize>)>,
) -> Result<Vec<FollowUp>, String> {
    let sig = decode(raw)?;
    match sig.subtask_type.as_deref() {
        None => Ok(vec![step(parent, &sig, first, chain, member, None)?]),
        Some("group") => {
            if !chain.is_empty() {
                return Err("a group followed by more chain steps".to_owned());
            }
            // A group keeps its own id (its members' results are read by it).
            let group = sig.options.task_id.clone().unwrap_or_else(uuid_string);
            let mut follow = Vec::new();
            for (index, task) in Nested::of(raw)?.members(Members::Tasks)?.iter().enumerate() {
                follow.extend(apply(
                    parent,
                    task,
                    first,
                    &[],
                    Some((&group, Some(index))),
                )?);
            }
            Ok(follow)
        }
        Some("chain") => {
            let tasks = Nested::of(raw)?.members(Members::Tasks)?;
            let Some((head, rest)) = tasks.split_first() else {
                return Ok(Vec::new());
            };
            // After the head: its own steps (the next one last), then ours.
            let mut steps = chain.to_vec();
            steps.extend(rest.iter().rev().cloned());
            apply(parent, head, first, &steps, member)
        }
        Some("chord") => {
            let nested = Nested::of(raw)?;
            let header = nested.members(Members::Header)?;
            let group = nested.chord_group_id(&sig).unwrap_or_else(uuid_string);
            let body = nested
                .kwargs
                .body
                .as_deref()
                .ok_or("a chord without a body")?;
            // The body, frozen into the header's group, carries the rest of
            // the chain: it runs after the chord.
            let body = frozen_body(body, &group, chain)?;
            if header.is_empty() {
                // Nothing to wait for: the body runs at once with [].
                let empty = RawValue::from_string("[]".to_owned()).map_err(|e| e.to_string())?;
                return apply(parent, &body, Some(&empty), &[], None);
            }
            let mut follow = Vec::with_capacity(header.len());
            for (index, task) in header.iter().enumerate() {
                follow.push(step(
                    parent,
                    &decode(task)?,
                    first,
                    &[],
                    Some((&group, Some(index))),
                    Some(&body),
                )?);
            }
            for part in &mut follow {
                part.chord_group = Some(group.clone());
            }
            if let Some(first_part) = follow.first_mut() {
                first_part.chord_start = Some(ChordStart {
                    group_id: group,
                    size: header.len(),
                    body,
                });
            }
            Ok(follow)
        }
        Some(other) => Err(format!("a signature of unknown type `{other}`")),
    }
}

/// A chord's body with the id it will run under (its own frozen one, or a
/// new one), in the chord's `group`, the steps `chain` after it added to
/// its own.
fn frozen_body(
    body: &RawValue,
    group: &str,
    chain: &[Box<RawValue>],
) -> Result<Box<RawValue>, String> {
    let mut body: serde_json::Map<String, Value> = serde_json::from_str(body.get())
        .map_err(|e| format!("a chord body does not decode: {e}"))?;
    let options = body
        .entry("options")
        .or_insert_with(|| Value::Object(Default::default()));
    let Value::Object(options) = options else {
        return Err("a chord body's options are not a map".to_owned());
    };
    if !options.get("task_id").is_some_and(Value::is_string) {
        options.insert("task_id".to_owned(), Value::String(uuid_string()));
    }
    // Its own group stays (a body that replaced a group member belongs to
    // that group); else the header's.
    options
        .entry("group_id")
        .or_insert_with(|| Value::String(group.to_owned()));
    if !chain.is_empty() {
        // Its own steps run first: they come after ours in the list.
        let mut steps: Vec<Value> = chain
            .iter()
            .map(|raw| serde_json::from_str(raw.get()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if let Some(Value::Array(own)) = options.get("chain") {
            steps.extend(own.iter().cloned());
        }
        options.insert("chain".to_owned(), Value::Array(steps));
    }
    serde_json::value::to_raw_value(&body).map_err(|e| e.to_string())
}

/// Signature `sig` as a task message following `parent`: `first` in front
/// of its arguments (unless immutable), `chain` as its remaining steps, in
/// group `member` (id, index) if given, a header part of chord `chord` (the
/// body) if given; its root is the parent's root.
fn step(
    parent: Parent<'_>,
    sig: &SignatureDict,
    first: Option<&RawValue>,
    chain: &[Box<RawValue>],
    member: Option<(&str, Option<usize>)>,
    chord: Option<&RawValue>,
) -> Result<FollowUp, String> {
    let mut args: Vec<Box<RawValue>> = Vec::with_capacity(sig.args.len() + 1);
    if let (Some(first), false) = (first, sig.immutable) {
        args.push(first.to_owned());
    }
    args.extend(sig.args.iter().cloned());
    let kwargs: Vec<(String, Box<RawValue>)> = sig
        .kwargs
        .iter()
        .filter_map(|(key, value)| {
            Some((key.clone(), serde_json::value::to_raw_value(value).ok()?))
        })
        .collect();
    let id = sig.options.task_id.clone().unwrap_or_else(uuid_string);
    let (eta, expires) = sig.options.schedule();
    let call = TaskCall {
        id: &id,
        name: &sig.task,
        args: &args,
        kwargs: &kwargs,
        reply_to: sig.options.reply_to.as_deref(),
        eta,
        expires,
        priority: sig.options.priority,
        time_limit: sig.options.time_limit,
        soft_time_limit: sig.options.soft_time_limit,
        ignore_result: false,
        retries: 0,
        root_id: Some(parent.root_id),
        parent_id: Some(parent.id),
    };
    // What its frozen options say it belongs to, unless told here (as
    // Celery's `apply_async` makes them message fields).
    let chord = chord.or(sig.options.chord.as_deref());
    let member = member.or_else(|| {
        let group = sig.options.group_id.as_deref()?;
        Some((group, sig.options.group_index))
    });
    let mut message = encode_task(&call).map_err(|e| e.to_string())?;
    set_embed(&mut message, &args, &kwargs, sig, chain, chord).map_err(|e| e.to_string())?;
    for (name, value) in sig.options.headers.iter().flatten() {
        let headers = &mut message.properties.headers;
        if !headers.contains_key(name) {
            headers.insert_json(name, value);
        }
    }
    if let Some((group, index)) = member {
        let headers = &mut message.properties.headers;
        headers.insert("group", text_value(group));
        if let Some(index) = index {
            headers.insert(
                "group_index",
                integer_value(i64::try_from(index).unwrap_or(i64::MAX)),
            );
        }
    }
    Ok(FollowUp {
        task: sig.task.clone(),
        queue: sig.options.queue.clone(),
        message,
        chord_start: None,
        chord_group: None,
    })
}

/// Rewrites the message body with this step's own `embed`: its callbacks
/// and errbacks (`link`, `link_error` options), the remaining `chain`
/// (`[]` on the last step, as Celery sends it) and the `chord` body of a
/// header part.
fn set_embed(
    message: &mut Message,
    args: &[Box<RawValue>],
    kwargs: &[(String, Box<RawValue>)],
    sig: &SignatureDict,
    chain: &[Box<RawValue>],
    chord: Option<&RawValue>,
) -> Result<(), serde_json::Error> {
    #[derive(serde::Serialize)]
    struct OutEmbed<'a> {
        callbacks: Option<&'a RawValue>,
        errbacks: Option<&'a RawValue>,
        chain: &'a [Box<RawValue>],
        chord: Option<&'a RawValue>,
    }
    let kwargs: serde_json::Map<String, Value> = kwargs
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), serde_json::from_str(value.get()).ok()?)))
        .collect();
    let embed = OutEmbed {
        callbacks: sig.options.link.as_deref(),
        errbacks: sig.options.link_error.as_deref(),
        chain,
        chord,
    };
    message.body = serde_json::to_vec(&(args, kwargs, embed))?;
    Ok(())
}

fn decode(raw: &RawValue) -> Result<SignatureDict, String> {
    serde_json::from_str(raw.get()).map_err(|error| format!("a signature does not decode: {error}"))
}

fn uuid_string() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::task_message::decode_task;

    fn request_with_embed(embed: &str) -> TaskRequest {
        let call = TaskCall {
            reply_to: Some("caller"),
            ..TaskCall::plain("t", "tasks.add")
        };
        let mut message = encode_task(&call).unwrap();
        message.body = format!("[[], {{}}, {embed}]").into_bytes();
        decode_task(&message).unwrap()
    }

    #[test]
    fn chain_callers_are_the_frozen_steps_next_first() {
        let unfrozen = request_with_embed(r#"{"chain": [{"task": "c"}]}"#);
        let embed = Embed::of(&unfrozen).unwrap();
        assert!(embed.chain_callers(Some("caller")).is_empty());
        let frozen = request_with_embed(
            r#"{"chain": [
            {"task": "add", "options": {"task_id": "last", "reply_to": "r1"}},
            {"task": "mul", "options": {"task_id": "next"}}]}"#,
        );
        let embed = Embed::of(&frozen).unwrap();
        assert_eq!(
            embed.chain_callers(Some("caller")),
            [
                ("next".to_owned(), "caller".to_owned()),
                ("last".to_owned(), "r1".to_owned())
            ]
        );
        assert_eq!(
            embed.chain_callers(None),
            [("last".to_owned(), "r1".to_owned())]
        );
    }

    /// Celery 5.7's `add.s(1,1) | group(mul.s(2), mul.s(3)) | tsum.s()`
    /// (CELERY_OPERATIONS.md §1.7): the chord element becomes its header
    /// parts, the previous result in front, in the header's group, each
    /// carrying the body (with the rest of the chain) in `embed.chord`; the
    /// first part says the chord's size.
    #[test]
    fn a_chord_in_a_chain_becomes_its_header_parts() {
        let request = request_with_embed(
            r#"{"chain": [
            {"task": "add", "args": [100], "options": {"task_id": "last"}},
            {"task": "celery.chord", "args": [], "subtask_type": "chord",
             "options": {"task_id": "g1"},
             "kwargs": {"kwargs": {},
               "header": {"task": "celery.group", "subtask_type": "group", "args": [],
                          "options": {"task_id": "g1"},
                          "kwargs": {"tasks": [
                            {"task": "mul", "args": [2], "options": {"task_id": "p0"}},
                            {"task": "mul", "args": [3], "options": {"task_id": "p1"}}]}},
               "body": {"task": "tsum", "args": [], "options": {"task_id": "b"}}}}]}"#,
        );
        let embed = Embed::of(&request).unwrap();
        assert_eq!(embed.unsupported(false, false).as_deref(), Some(NO_CHORDS));
        assert_eq!(embed.unsupported(false, true), None);
        let two = RawValue::from_string("2".into()).unwrap();
        let follow = embed.after_success(&request, &two).unwrap();
        assert_eq!(follow.len(), 2);
        let start = follow[0]
            .chord_start
            .as_ref()
            .expect("the first part starts it");
        assert_eq!((start.group_id.as_str(), start.size), ("g1", 2));
        assert!(follow[1].chord_start.is_none());
        assert!(follow
            .iter()
            .all(|part| part.chord_group.as_deref() == Some("g1")));
        for (index, part) in follow.iter().enumerate() {
            let sent = decode_task(&part.message).unwrap();
            assert_eq!(sent.id, format!("p{index}"));
            assert_eq!(sent.parent_id.as_deref(), Some("t"));
            let headers = &part.message.properties.headers;
            assert_eq!(headers.get_str("group"), Some("g1"));
            let body: Value = serde_json::from_slice(&part.message.body).unwrap();
            assert_eq!(body[0], serde_json::json!([2, index + 2]));
            let chord = &body[2]["chord"];
            assert_eq!(chord["task"], "tsum");
            assert_eq!(chord["options"]["group_id"], "g1");
            assert_eq!(chord["options"]["chain"][0]["options"]["task_id"], "last");
        }
        // The part that completes the chord publishes the body, which
        // carries the rest of the chain.
        let part = decode_task(&follow[1].message).unwrap();
        let values = RawValue::from_string("[4, 6]".into()).unwrap();
        let body = Embed::of(&part)
            .unwrap()
            .chord_body()
            .unwrap()
            .message(&part.id, "t", "g1", &values)
            .unwrap();
        let sent = decode_task(&body.message).unwrap();
        assert_eq!(sent.id, "b");
        let next: Value = serde_json::from_slice(&body.message.body).unwrap();
        assert_eq!(next[0], serde_json::json!([[4, 6]]));
        assert_eq!(next[2]["chain"][0]["options"]["task_id"], "last");
    }

    #[test]
    fn groups_end_a_chain_and_hold_chains() {
        let group_last = request_with_embed(
            r#"{"chain": [{"task": "celery.group", "subtask_type": "group",
             "options": {"task_id": "g"},
             "kwargs": {"tasks": [
               {"task": "add", "args": [1], "options": {"task_id": "a"}},
               {"task": "celery.chain", "subtask_type": "chain", "kwargs": {"tasks": [
                 {"task": "add", "args": [2], "options": {"task_id": "b"}},
                 {"task": "mul", "args": [3], "options": {"task_id": "c"}}]}}]}}]}"#,
        );
        let embed = Embed::of(&group_last).unwrap();
        assert_eq!(embed.unsupported(false, false), None);
        let one = RawValue::from_string("1".into()).unwrap();
        let follow = embed.after_success(&group_last, &one).unwrap();
        let sent: Vec<_> = follow
            .iter()
            .map(|f| decode_task(&f.message).unwrap())
            .collect();
        assert_eq!((sent[0].id.as_str(), sent[1].id.as_str()), ("a", "b"));
        let second: Value = serde_json::from_slice(&follow[1].message.body).unwrap();
        assert_eq!(second[0], serde_json::json!([1, 2]));
        assert_eq!(second[2]["chain"][0]["options"]["task_id"], "c");
        assert_eq!(
            follow[1].message.properties.headers.get_str("group"),
            Some("g")
        );

        let group_then_more = request_with_embed(
            r#"{"chain": [{"task": "add"},
             {"task": "celery.group", "subtask_type": "group", "kwargs": {"tasks": []}}]}"#,
        );
        let refused = Embed::of(&group_then_more).unwrap().unsupported(true, true);
        assert!(refused.unwrap().contains("followed by more chain steps"));
        let unknown =
            request_with_embed(r#"{"callbacks": [{"task": "x", "subtask_type": "map"}]}"#);
        let refused = Embed::of(&unknown).unwrap().unsupported(true, true);
        assert!(refused.unwrap().contains("unknown type `map`"));
    }
}

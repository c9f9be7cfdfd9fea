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
use crate::protocol::task_message::{encode_task, TaskCall, TaskRequest};
use crate::Registry;

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
    /// The group it belongs to (a chord body's: its header's group).
    #[serde(default)]
    group_id: Option<String>,
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

    /// What cannot run yet, if anything: a chord part when `chords` is off
    /// (no backend that joins chords), nested canvas (a group or chain as a
    /// callback or step), or a signature that does not decode.
    pub fn unsupported(&self, chords: bool) -> Option<String> {
        match self.chord() {
            Some(_) if !chords => {
                return Some("a chord (its worker needs the Redis result backend)".to_owned())
            }
            Some(body) => match decode(body) {
                Ok(sig) if sig.subtask_type.is_none() => {}
                Ok(sig) => {
                    return Some(format!(
                        "a chord whose body is a {}",
                        sig.subtask_type.unwrap_or_default()
                    ))
                }
                Err(error) => return Some(error),
            },
            None => {}
        }
        for raw in self
            .callbacks()
            .iter()
            .chain(self.errbacks())
            .chain(self.chain())
        {
            match serde_json::from_str::<SignatureDict>(raw.get()) {
                Ok(sig) if sig.subtask_type.is_none() => {}
                Ok(sig) => {
                    return Some(format!(
                        "a nested {} in its canvas",
                        sig.subtask_type.unwrap_or_default()
                    ))
                }
                Err(error) => return Some(format!("a signature that does not decode ({error})")),
            }
        }
        None
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
        // Several callbacks go out as a group of their own.
        let group = (callbacks.len() > 1).then(uuid_string);
        for (index, raw) in callbacks.iter().enumerate() {
            let member = group.as_deref().map(|id| (id, Some(index)));
            follow.push(step(
                Parent::of(request),
                &decode(raw)?,
                Some(value),
                &[],
                member,
            )?);
        }
        if let Some((next, rest)) = self.chain().split_last() {
            follow.push(step(
                Parent::of(request),
                &decode(next)?,
                Some(value),
                rest,
                None,
            )?);
        }
        Ok(follow)
    }

    /// The body of the chord `request` is a header part of, as the part
    /// that completed the header publishes it: the header's values (in
    /// header order, `values`) in front of its arguments unless immutable,
    /// in the header's group `group_id`, its parent this part.
    pub fn chord_body(
        &self,
        request: &TaskRequest,
        group_id: &str,
        values: &RawValue,
    ) -> Result<FollowUp, String> {
        let body = decode(self.chord().ok_or("the message carries no chord")?)?;
        let group = body.options.group_id.as_deref().unwrap_or(group_id);
        step(
            Parent::of(request),
            &body,
            Some(values),
            &[],
            Some((group, None)),
        )
    }

    /// `(task_id, reply_to)` of the chord body, told FAILURE when a part
    /// failed (Celery's `ChordError`).
    pub fn chord_body_caller(&self) -> Option<(String, Option<String>)> {
        let body = decode(self.chord()?).ok()?;
        Some((body.options.task_id?, body.options.reply_to))
    }

    /// The chord body's errbacks after a part failed, each with the body's
    /// id as its argument, the body as parent and root, in a new group (as
    /// Celery's `chord_error_from_stack` calls them).
    pub fn chord_body_errbacks(&self) -> Result<Vec<FollowUp>, String> {
        let Some(body) = self.chord() else {
            return Ok(Vec::new());
        };
        let body = decode(body)?;
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
        errbacks
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                step(
                    parent,
                    &decode(raw)?,
                    Some(&failed_id),
                    &[],
                    Some((&group, Some(index))),
                )
            })
            .collect()
    }

    /// The errbacks of a failure of `request`, each with the failed task's
    /// id as its first argument.
    pub fn after_failure(&self, request: &TaskRequest) -> Result<Vec<FollowUp>, String> {
        let failed_id = serde_json::value::to_raw_value(&request.id).map_err(|e| e.to_string())?;
        let errbacks = self.errbacks();
        let group = (!errbacks.is_empty()).then(uuid_string);
        errbacks
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                let member = group.as_deref().map(|id| (id, Some(index)));
                step(
                    Parent::of(request),
                    &decode(raw)?,
                    Some(&failed_id),
                    &[],
                    member,
                )
            })
            .collect()
    }
}

/// Signature `sig` as a task message following `parent`: `first` in front
/// of its arguments (unless immutable), `chain` as its remaining steps, in
/// group `member` (id, index) if given; its root is the parent's root.
fn step(
    parent: Parent<'_>,
    sig: &SignatureDict,
    first: Option<&RawValue>,
    chain: &[Box<RawValue>],
    member: Option<(&str, Option<usize>)>,
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
    let mut message = encode_task(&call).map_err(|e| e.to_string())?;
    set_embed(&mut message, &args, &kwargs, sig, chain).map_err(|e| e.to_string())?;
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
    })
}

/// Rewrites the message body with this step's own `embed`: its callbacks
/// and errbacks (`link`, `link_error` options) and the remaining `chain`
/// (`[]` on the last step, as Celery sends it).
fn set_embed(
    message: &mut Message,
    args: &[Box<RawValue>],
    kwargs: &[(String, Box<RawValue>)],
    sig: &SignatureDict,
    chain: &[Box<RawValue>],
) -> Result<(), serde_json::Error> {
    #[derive(serde::Serialize)]
    struct OutEmbed<'a> {
        callbacks: Option<&'a RawValue>,
        errbacks: Option<&'a RawValue>,
        chain: &'a [Box<RawValue>],
        chord: Option<()>,
    }
    let kwargs: serde_json::Map<String, Value> = kwargs
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), serde_json::from_str(value.get()).ok()?)))
        .collect();
    let embed = OutEmbed {
        callbacks: sig.options.link.as_deref(),
        errbacks: sig.options.link_error.as_deref(),
        chain,
        chord: None,
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
            id: "t",
            name: "tasks.add",
            args: &[],
            kwargs: &[],
            reply_to: Some("caller"),
            eta: None,
            expires: None,
            priority: None,
            time_limit: None,
            soft_time_limit: None,
            ignore_result: false,
            retries: 0,
            root_id: None,
            parent_id: None,
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
}

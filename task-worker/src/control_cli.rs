//! The worker binary's `inspect` and `control` commands: Celery's
//! `celery inspect` / `celery control` for teams without Python, through
//! [`task_core::control::Control`], with the same positional arguments and
//! output (or `--json`).

use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value};
use task_core::control::revoke_log::{self, RevokeEntry};
use task_core::control::{Broadcast, Replies};
use task_core::App;

/// `inspect <method>` / `control <method>`: what to send, to whom.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The command: for `inspect`, `ping`, `stats`, `active`, `reserved`,
    /// `scheduled`, `registered`, `active_queues`, `revoked`, `query_task`,
    /// `conf`, `clock`; for `control`, `revoke`, `terminate`, `rate_limit`,
    /// `time_limit`, `pool_grow`, `pool_shrink`, `enable_events`,
    /// `disable_events`, `heartbeat`, `shutdown`, ...
    pub method: String,
    /// Its arguments, as Celery's command line takes them (`revoke <id>...`,
    /// `terminate <signal> <id>...`, `rate_limit <task> <rate>`,
    /// `time_limit <task> <soft> [<hard>]`, `pool_grow [<n>]`,
    /// `query_task <id>...`).
    pub args: Vec<String>,
    /// Only these workers (node names, comma-separated).
    #[arg(short = 'd', long, value_delimiter = ',')]
    pub destination: Vec<String>,
    /// Seconds to wait for replies.
    #[arg(short = 't', long, default_value_t = 1.0)]
    pub timeout: f64,
    /// Print the replies as one JSON object by node name.
    #[arg(short = 'j', long)]
    pub json: bool,
    /// `revoke`: also stop the task if it runs (an async body; a blocking
    /// one cannot be interrupted).
    #[arg(long)]
    pub terminate: bool,
}

/// How a positional argument is sent.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Number,
    /// This one and every one after it, as a list.
    Rest,
}

/// The positional arguments of each command, as Celery names them.
fn parameters(method: &str) -> &'static [(&'static str, Kind)] {
    match method {
        "revoke" => &[("task_id", Kind::Rest)],
        "query_task" => &[("ids", Kind::Rest)],
        "terminate" => &[("signal", Kind::Text), ("task_id", Kind::Rest)],
        "rate_limit" => &[("task_name", Kind::Text), ("rate_limit", Kind::Text)],
        "time_limit" => &[
            ("task_name", Kind::Text),
            ("soft", Kind::Number),
            ("hard", Kind::Number),
        ],
        "pool_grow" | "pool_shrink" => &[("n", Kind::Number)],
        "autoscale" => &[("max", Kind::Number), ("min", Kind::Number)],
        "add_consumer" => &[
            ("queue", Kind::Text),
            ("exchange", Kind::Text),
            ("exchange_type", Kind::Text),
            ("routing_key", Kind::Text),
        ],
        "cancel_consumer" => &[("queue", Kind::Text)],
        "registered" => &[("taskinfoitems", Kind::Rest)],
        _ => &[],
    }
}

/// The request's arguments from the positional ones.
fn arguments(args: &RemoteArgs) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut given = args.args.iter();
    for &(name, kind) in parameters(&args.method) {
        match kind {
            Kind::Rest => {
                let rest: Vec<Value> = given.by_ref().map(|a| Value::from(a.as_str())).collect();
                out.insert(name.into(), Value::Array(rest));
            }
            Kind::Text => {
                if let Some(text) = given.next() {
                    out.insert(name.into(), text.as_str().into());
                }
            }
            Kind::Number => {
                if let Some(text) = given.next() {
                    let number: f64 = text
                        .parse()
                        .map_err(|_| format!("{name}: `{text}` is not a number"))?;
                    let value = if number.fract() == 0.0 && number.abs() < 1e15 {
                        Value::from(number as i64)
                    } else {
                        Value::from(number)
                    };
                    out.insert(name.into(), value);
                }
            }
        }
    }
    if let Some(extra) = given.next() {
        return Err(format!("`{}` takes no argument `{extra}`", args.method));
    }
    if args.method == "revoke" {
        out.insert("terminate".into(), args.terminate.into());
        out.insert("signal".into(), "SIGTERM".into());
    }
    Ok(out)
}

/// Sends the command and prints the replies; `Ok(false)` when no worker
/// replied (the binary then exits 69, as `celery` does).
pub async fn run(app: &App, args: &RemoteArgs) -> Result<bool, String> {
    let mut arguments = arguments(args)?;
    let timeout = Duration::try_from_secs_f64(args.timeout.max(0.0))
        .map_err(|error| format!("--timeout: {error}"))?;
    let to = Broadcast {
        destination: (!args.destination.is_empty()).then(|| args.destination.clone()),
        pattern: None,
        reply_timeout: Some(timeout),
    };
    if matches!(args.method.as_str(), "revoke" | "terminate") && app.broker().supports_streams() {
        // In the revoke log first, as `Control::revoke` does: workers
        // started later know it too.
        let ids = arguments
            .get("task_id")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        revoke_log::append(app.broker().as_ref(), &RevokeEntry::revoking(ids))
            .await
            .map_err(|error| error.to_string())?;
        arguments.insert("logged".into(), true.into());
    }
    if args.method == "shutdown" {
        app.control()
            .request(&args.method, arguments, &to.cast())
            .await
            .map_err(|error| error.to_string())?;
        println!("shutdown sent");
        return Ok(true);
    }
    let replies = app
        .control()
        .request(&args.method, arguments, &to)
        .await
        .map_err(|error| error.to_string())?;
    print_replies(&replies, args.json);
    Ok(!replies.is_empty())
}

fn print_replies(replies: &Replies, json: bool) {
    if json {
        let by_node: Map<String, Value> = replies.iter().cloned().collect();
        println!("{}", Value::Object(by_node));
        return;
    }
    if replies.is_empty() {
        eprintln!("Error: No nodes replied within time constraint");
        return;
    }
    for (node, reply) in replies {
        let status = if reply.get("error").is_some() {
            "ERROR"
        } else {
            "OK"
        };
        println!("->  {node}: {status}");
        match reply {
            Value::Object(map)
                if map.len() == 1 && (map.contains_key("ok") || map.contains_key("error")) =>
            {
                let text = map
                    .values()
                    .next()
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                println!("        {text}");
            }
            Value::Array(items) => {
                for item in items {
                    match item.as_str() {
                        Some(text) => println!("    * {text}"),
                        None => println!("    * {item}"),
                    }
                }
                if items.is_empty() {
                    println!("    - empty -");
                }
            }
            other => {
                let pretty = serde_json::to_string_pretty(other).unwrap_or_default();
                for line in pretty.lines() {
                    println!("    {line}");
                }
            }
        }
    }
    let n = replies.len();
    println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(method: &str, args: &[&str]) -> Result<Map<String, Value>, String> {
        arguments(&RemoteArgs {
            method: method.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            destination: Vec::new(),
            timeout: 1.0,
            json: false,
            terminate: false,
        })
    }

    #[test]
    fn positional_arguments_become_celerys_named_ones() {
        let revoke = parsed("revoke", &["a", "b"]).unwrap();
        assert_eq!(revoke["task_id"], serde_json::json!(["a", "b"]));
        let terminate = parsed("terminate", &["SIGKILL", "a"]).unwrap();
        assert_eq!(terminate["signal"], "SIGKILL");
        let limit = parsed("time_limit", &["tasks.add", "1.5", "3"]).unwrap();
        assert_eq!(
            (limit["soft"].clone(), limit["hard"].clone()),
            (1.5.into(), 3.into())
        );
        assert_eq!(
            parsed("query_task", &["x"]).unwrap()["ids"],
            serde_json::json!(["x"])
        );
        assert!(parsed("pool_grow", &["many"]).is_err());
        assert!(parsed("ping", &["extra"]).is_err());
    }
}

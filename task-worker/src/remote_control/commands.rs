//! The remote control commands a worker answers, by name, with Celery's
//! arguments and reply shapes (CELERY_OPERATIONS.md §3.3, §3.4).

use std::time::Duration;

use serde_json::{json, Map, Value};
use task_core::control::revoke_log::{self, RevokeEntry};
use task_core::control::ControlRequest;
use task_core::events::EventKind;
use task_core::RateLimit;
use tokio::sync::oneshot;

use crate::events::worker_status;
use crate::node::{Node, QueueChange};
use crate::requests::Termination;

/// Runs `request` on `node`; `None`: no reply (`shutdown`, the node's own
/// `hello`).
pub(super) async fn run(node: &Node, request: &ControlRequest) -> Option<Value> {
    let args = &request.arguments;
    let answer = match request.method.as_str() {
        "ping" => ok("pong"),
        "clock" => json!({"clock": node.app.clock().value()}),
        "stats" => stats(node),
        "active" => json!(node.requests.active(&node.hostname, flag(args, "safe"))),
        "reserved" => json!(node.requests.reserved(&node.hostname, flag(args, "safe"))),
        "scheduled" => json!(node.requests.scheduled(&node.hostname)),
        "registered" => registered(node),
        "active_queues" => active_queues(node),
        "revoked" => json!(node.revoked.list()),
        "query_task" => node.requests.query(&ids(args, "ids"), &node.hostname),
        "conf" => conf(node),
        "report" => ok(&report(node)),
        "revoke_by_stamped_headers" => revoke_by_stamps(node, args),
        "revoke" => revoke(node, &ids(args, "task_id"), flag(args, "terminate"), args).await,
        "terminate" => revoke(node, &ids(args, "task_id"), true, args).await,
        "rate_limit" => rate_limit(node, args),
        "time_limit" => time_limit(node, args),
        "pool_grow" => {
            match &node.autoscaler {
                Some(scaler) => scaler.force_grow(node, count(args)),
                None => node.grow(count(args)),
            }
            ok("pool will grow")
        }
        "pool_shrink" => {
            let shrunk = match &node.autoscaler {
                Some(scaler) => scaler.force_shrink(node, count(args)),
                None => node.shrink(count(args)),
            };
            if shrunk == 0 {
                error("cannot shrink the pool below one slot")
            } else {
                ok("pool will shrink")
            }
        }
        "autoscale" => match &node.autoscaler {
            Some(scaler) => {
                let number = |name| {
                    args.get(name)
                        .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
                        .and_then(|n| usize::try_from(n).ok())
                };
                let bounds = scaler.update(node, number("max"), number("min"));
                ok(&format!(
                    "autoscale now max={} min={}",
                    bounds.max, bounds.min
                ))
            }
            None => error("Autoscale not enabled"),
        },
        "enable_events" => {
            if node.events.set_task_events(true) {
                tracing::info!("task events enabled by remote control");
            }
            ok("task events enabled")
        }
        "disable_events" => {
            if node.events.set_task_events(false) {
                tracing::info!("task events disabled by remote control");
            }
            ok("task events disabled")
        }
        "heartbeat" => {
            node.events
                .worker(EventKind::WorkerHeartbeat(worker_status(5.0, None)))
                .await;
            return request.reply_to.as_ref().map(|_| Value::Null);
        }
        "shutdown" => {
            tracing::warn!("shutdown asked for by remote control");
            node.shutdown.cancel();
            return None;
        }
        "hello" => {
            let from = args.get("from_node").and_then(Value::as_str);
            if from == Some(node.hostname.as_str()) {
                return None;
            }
            merge_revoked(node, args.get("revoked"));
            json!({"revoked": node.revoked.list(), "clock": node.app.clock().forward()})
        }
        "add_consumer" | "cancel_consumer" => {
            let Some(queue) = args.get("queue").and_then(Value::as_str) else {
                return Some(error("no queue given"));
            };
            let (answer, answered) = oneshot::channel();
            let queue = queue.to_owned();
            let change = if request.method == "add_consumer" {
                QueueChange::Add { queue, answer }
            } else {
                QueueChange::Cancel { queue, answer }
            };
            if node.queue_changes.send(change).is_err() {
                return Some(error("the worker is stopping"));
            }
            answered
                .await
                .unwrap_or_else(|_| error("the worker is stopping"))
        }
        other => error(&format!("unknown command `{other}`")),
    };
    Some(answer)
}

fn merge_revoked(node: &Node, revoked: Option<&Value>) {
    for id in revoked.and_then(Value::as_array).into_iter().flatten() {
        if let Some(id) = id.as_str() {
            node.revoked.insert(id);
        }
    }
}

fn ok(text: &str) -> Value {
    json!({"ok": text})
}

fn error(text: &str) -> Value {
    json!({"error": text})
}

fn flag(args: &Map<String, Value>, key: &str) -> bool {
    args.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// `n` for pool_grow / pool_shrink (default 1).
fn count(args: &Map<String, Value>) -> usize {
    args.get("n")
        .and_then(|n| n.as_u64().or_else(|| n.as_str()?.parse().ok()))
        .map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Task ids given as one id or a list of them.
fn ids(args: &Map<String, Value>, key: &str) -> Vec<String> {
    match args.get(key) {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Revokes `ids` here and, unless the request says it was logged already
/// (a Rust client writes the log itself), in the revoke log, before the
/// reply: then workers started later know them too.
async fn revoke(node: &Node, ids: &[String], terminate: bool, args: &Map<String, Value>) -> Value {
    if ids.is_empty() {
        return error("no task id given");
    }
    for id in ids {
        node.revoked.insert(id);
    }
    let broker = node.app.broker();
    if broker.supports_streams() && !flag(args, "logged") {
        let entry = RevokeEntry::revoking(ids.to_vec());
        if let Err(failure) = revoke_log::append(broker.as_ref(), &entry).await {
            tracing::warn!(error = %failure, "could not write the revoke to the revoke log: \
                workers started later will not know it");
        }
    }
    tracing::info!(task_ids = ?ids, terminate, "tasks revoked");
    if !terminate {
        let listed: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
        return ok(&format!(
            "tasks {{{}}} flagged as revoked",
            listed.join(", ")
        ));
    }
    let mut stopped = Vec::new();
    let mut blocking = Vec::new();
    for id in ids {
        match node.requests.terminate(id) {
            Termination::Stopped => stopped.push(id.as_str()),
            Termination::Blocking => blocking.push(id.as_str()),
            Termination::NotRunning => {}
        }
    }
    if !blocking.is_empty() {
        return error(&format!(
            "cannot terminate {}: a blocking task's thread cannot be interrupted; it is revoked \
             and its result will be dropped{}",
            blocking.join(", "),
            if stopped.is_empty() {
                String::new()
            } else {
                format!(" (terminated: {})", stopped.join(", "))
            }
        ));
    }
    if stopped.is_empty() {
        return ok("terminate: tasks unknown");
    }
    ok(&format!("terminate: {}", stopped.join(", ")))
}

fn rate_limit(node: &Node, args: &Map<String, Value>) -> Value {
    let Some(task) = args.get("task_name").and_then(Value::as_str) else {
        return error("no task_name given");
    };
    if node.registry.get(task).is_none() {
        return error("unknown task");
    }
    let limit = match args.get("rate_limit") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => None,
        Some(Value::String(text)) if text.is_empty() || text == "0" => None,
        Some(value) => {
            let text = value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            match text.parse::<RateLimit>() {
                Ok(limit) => Some(limit),
                Err(error_text) => {
                    return error(&format!("invalid rate limit {text:?}: {error_text}"))
                }
            }
        }
    };
    node.settings.set_rate_limit(task, limit);
    tracing::info!(task, ?limit, "rate limit changed by remote control");
    ok(match limit {
        Some(_) => "new rate limit set successfully",
        None => "rate limit disabled successfully",
    })
}

fn time_limit(node: &Node, args: &Map<String, Value>) -> Value {
    let Some(task) = args.get("task_name").and_then(Value::as_str) else {
        return error("no task_name given");
    };
    if node.registry.get(task).is_none() {
        return error("unknown task");
    }
    let seconds = |key: &str| {
        args.get(key)
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
    };
    node.settings
        .set_time_limits(task, seconds("hard"), seconds("soft"));
    ok("time limits set successfully")
}

fn registered(node: &Node) -> Value {
    let names: Vec<String> = node
        .registry
        .names()
        .into_iter()
        .filter(|name| !name.starts_with("celery.") && !name.starts_with("task_core."))
        .filter_map(|name| {
            let task = node.registry.get(name)?;
            Some(match node.settings.rate_limit(task) {
                Some(limit) => format!("{name} [rate_limit={limit}]"),
                None => name.to_owned(),
            })
        })
        .collect();
    json!(names)
}

fn active_queues(node: &Node) -> Value {
    let queues: Vec<Value> = node
        .queues()
        .iter()
        .map(|queue| {
            json!({
                "name": queue,
                "exchange": {"name": queue, "type": "direct", "arguments": null, "durable": true,
                    "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false},
                "routing_key": queue,
                "queue_arguments": null,
                "binding_arguments": null,
                "consumer_arguments": null,
                "durable": true,
                "exclusive": false,
                "auto_delete": false,
                "no_ack": false,
                "alias": null,
                "bindings": [],
                "no_declare": null,
                "expires": null,
                "message_ttl": null,
                "max_length": null,
                "max_length_bytes": null,
                "max_priority": null,
            })
        })
        .collect();
    json!(queues)
}

fn stats(node: &Node) -> Value {
    let mut stats = json!({
        "total": node.requests.totals(),
        "pid": std::process::id(),
        "clock": node.app.clock().value().to_string(),
        "uptime": node.started.elapsed().as_secs(),
        "pool": {
            "implementation": "tokio",
            "max-concurrency": node.concurrency(),
            "processes": [std::process::id()],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            "timeouts": [0, 0],
        },
        "broker": broker_info(node.app.broker_url()),
        "prefetch_count": node.prefetch,
        "sw_ident": env!("CARGO_PKG_NAME"),
        "sw_ver": env!("CARGO_PKG_VERSION"),
    });
    // Only with autoscaling on, as Celery's.
    if let (Some(scaler), Some(fields)) = (&node.autoscaler, stats.as_object_mut()) {
        fields.insert("autoscaler".into(), scaler.info(node));
    }
    stats
}

/// Celery's `stats.broker` from the (redacted) broker URL.
fn broker_info(url: &str) -> Value {
    // A list of nodes (`a;b;c`, Celery's failover form): the first, with
    // the others as Celery's `alternates`.
    let nodes = task_core::broker::split_nodes(url);
    let url = nodes.first().copied().unwrap_or(url);
    let alternates: Vec<&str> = nodes.iter().skip(1).copied().collect();
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let (credentials, address) = rest.rsplit_once('@').unwrap_or(("", rest));
    let userid = credentials
        .split(':')
        .next()
        .filter(|u| !u.is_empty())
        .unwrap_or("guest");
    let (host_port, vhost) = address.split_once('/').unwrap_or((address, ""));
    let (hostname, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().ok()),
        None => (host_port, None),
    };
    let tls = matches!(scheme, "amqps" | "rediss");
    let redis = matches!(scheme, "redis" | "rediss");
    // Redis: the database number is kombu's virtual host; the query holds
    // transport options.
    let vhost = percent_decode(vhost.split('?').next().unwrap_or(""));
    let (userid, vhost, default_port) = match (redis, vhost.is_empty()) {
        (true, true) => (Value::Null, "0".to_owned(), 6379),
        (true, false) => (Value::Null, vhost, 6379),
        (false, true) => (json!(userid), "/".to_owned(), if tls { 5671 } else { 5672 }),
        (false, false) => (json!(userid), vhost, if tls { 5671 } else { 5672 }),
    };
    json!({
        "hostname": hostname,
        "userid": userid,
        "virtual_host": vhost,
        "port": port.unwrap_or(default_port),
        "insist": false,
        "ssl": tls,
        "transport": scheme,
        "connect_timeout": 4,
        "transport_options": {},
        "login_method": "PLAIN",
        "uri_prefix": null,
        "heartbeat": 60.0,
        "failover_strategy": "round-robin",
        "alternates": alternates,
    })
}

fn percent_decode(text: &str) -> String {
    text.replace("%2f", "/").replace("%2F", "/")
}

/// `conf`: the settings this worker runs with that differ from Celery's
/// defaults, under Celery's names.
/// `revoke_by_stamped_headers`: `headers` (`{name: value or values}`, or
/// Celery's `["name=value", ...]`) revoked from now on; with `terminate`,
/// the running async tasks they match stopped. Replies as Celery's.
fn revoke_by_stamps(node: &Node, args: &Map<String, Value>) -> Value {
    let headers: Map<String, Value> = match args.get("headers") {
        Some(Value::Object(headers)) => headers.clone(),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .filter_map(|pair| {
                let (name, value) = pair.as_str()?.split_once('=')?;
                Some((name.to_owned(), Value::from(value)))
            })
            .collect(),
        _ => return error("no stamped headers given"),
    };
    for (name, values) in &headers {
        node.revoked_stamps.add(name, values);
    }
    let shown = python_repr(&Value::Object(headers.clone()));
    tracing::info!(headers = %shown, terminate = flag(args, "terminate"), "stamps revoked");
    if !flag(args, "terminate") {
        return ok(&format!(
            "headers {shown} flagged as revoked, but not terminated"
        ));
    }
    let stopped = node
        .requests
        .terminate_stamped(|stamps| node.revoked_stamps.revoking(stamps));
    if stopped.is_empty() {
        return ok(&format!("headers {shown} were not terminated"));
    }
    ok(&format!(
        "headers {} revoked",
        python_repr(&Value::Array(stopped))
    ))
}

/// `value` as Python writes it (`{'name': 'value'}`).
fn python_repr(value: &Value) -> String {
    serde_json::value::to_raw_value(value)
        .map(|raw| task_core::protocol::repr::value_repr_of(&raw))
        .unwrap_or_default()
}

/// `inspect report`: Celery's bug-report text, for this worker.
fn report(node: &Node) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let backend = node
        .app
        .result_backend()
        .map_or_else(|| "rpc://".to_owned(), |backend| backend.describe());
    format!(
        "\nsoftware -> task-worker:{worker} task-core:{core} (Rust)\n\
         \x20           lapin (AMQP 0-9-1)\n\
         platform -> system:{os} arch:{arch}\n\
         \x20           kernel version:{kernel} imp:Rust\n\
         loader   -> task_core::Registry ({tasks} tasks)\n\
         settings -> transport:amqp results:{backend}\n\n{conf}\n",
        worker = env!("CARGO_PKG_VERSION"),
        core = env!("CARGO_PKG_VERSION"),
        os = std::env::consts::OS,
        arch = std::env::consts::ARCH,
        kernel = kernel.trim(),
        tasks = node.registry.names().len(),
        conf = serde_json::to_string_pretty(&conf(node)).unwrap_or_default(),
    )
}

fn conf(node: &Node) -> Value {
    json!({
        "broker_url": node.app.broker_url(),
        "worker_concurrency": node.concurrency(),
        "worker_prefetch_count": node.prefetch,
        "task_default_queue": node.app.default_queue(),
        "worker_send_task_events": node.events.task_events(),
        "include": node.registry.names(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_info_reads_the_url() {
        let list = broker_info("amqp://guest:***@10.0.0.1:5672/%2f;amqp://guest:***@10.0.0.2//");
        assert_eq!(list["hostname"], "10.0.0.1");
        assert_eq!(list["alternates"], json!(["amqp://guest:***@10.0.0.2//"]));
        let info = broker_info("amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(info["hostname"], "127.0.0.1");
        assert_eq!(info["port"], 5672);
        assert_eq!(info["userid"], "guest");
        assert_eq!(info["virtual_host"], "/");
        let redis = broker_info("redis://:***@10.0.0.3/2?visibility_timeout=30");
        assert_eq!(
            (
                redis["port"].clone(),
                redis["virtual_host"].clone(),
                redis["transport"].clone()
            ),
            (json!(6379), json!("2"), json!("redis"))
        );
        let tls = broker_info("amqps://rabbit.example.com/prod");
        assert_eq!(
            (tls["port"].clone(), tls["ssl"].clone()),
            (json!(5671), json!(true))
        );
    }

    #[test]
    fn ids_come_alone_or_as_a_list() {
        let args = json!({"a": "x", "b": ["y", "z"]});
        let args = args.as_object().unwrap();
        assert_eq!(ids(args, "a"), ["x"]);
        assert_eq!(ids(args, "b"), ["y", "z"]);
        assert!(ids(args, "c").is_empty());
    }
}

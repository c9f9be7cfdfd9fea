//! Celery's remote control (CELERY_OPERATIONS.md §3, kombu's pidbox): the
//! requests `celery inspect` / `celery control` and Flower broadcast to
//! workers on the `celery.pidbox` fanout exchange, and the replies they
//! collect from `reply.celery.pidbox`.
//!
//! - [`ControlRequest`]: one request as it travels, and whether a node is
//!   one of its destinations ([`ControlRequest::is_for`]);
//! - [`Control`]: the client side, for Rust code and the worker binary's
//!   `inspect` / `control` commands ([`App::control`](crate::App::control));
//! - [`revoke_log`]: revoked ids kept by RabbitMQ in a stream, read by
//!   every worker, so that revokes hold across restarts;
//! - [`node_name`]: a worker's node name (`celery@host`) from Celery's
//!   `-n` template.
//!
//! The worker side (answering the requests) is `task_worker`'s.

mod client;
pub mod revoke_log;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use client::{Broadcast, Control, ControlError, Replies};

/// The exchange requests are broadcast on: fanout, not durable.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";

/// The exchange replies are sent to: direct, not durable, routed by the
/// requesting client's id.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// A worker's own request queue: `<node name>.celery.pidbox`.
pub fn node_queue(node: &str) -> String {
    format!("{node}.celery.pidbox")
}

/// Where a request wants its replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The reply exchange ([`REPLY_EXCHANGE`]).
    pub exchange: String,
    /// The requesting client's id.
    pub routing_key: String,
}

/// One remote control request, as kombu's pidbox sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The command (`ping`, `stats`, `revoke`, ...).
    pub method: String,
    /// Its arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// The node names it is for; `None`: every node.
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    /// A pattern node names must match (with [`ControlRequest::matcher`]).
    #[serde(default)]
    pub pattern: Option<String>,
    /// How [`ControlRequest::pattern`] matches: `glob` (the default) or
    /// `pcre` (a regular expression).
    #[serde(default)]
    pub matcher: Option<String>,
    /// Pairs replies with the request; absent on casts (no reply wanted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Where replies go; absent on casts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
}

impl ControlRequest {
    /// Whether the node `node` runs this request: it is named in
    /// `destination`, or matches `pattern`, or the request names no one.
    /// A pattern that does not parse matches nothing.
    pub fn is_for(&self, node: &str) -> bool {
        if let Some(destination) = &self.destination {
            if destination.iter().any(|name| name == node) {
                return true;
            }
        }
        match &self.pattern {
            Some(pattern) => match self.matcher.as_deref() {
                Some("pcre") => regex::Regex::new(pattern).is_ok_and(|re| re.is_match(node)),
                _ => glob::Pattern::new(pattern).is_ok_and(|glob| glob.matches(node)),
            },
            None => self.destination.is_none(),
        }
    }
}

/// A worker's node name from a Celery `-n` template: `%h` the host name,
/// `%n` its first label, `%d` the rest (the domain), `%%` a `%`; a name
/// without `@` gets `celery@` in front, as in Celery.
///
/// ```
/// use task_core::control::node_name;
/// assert_eq!(node_name("w1@%h", "box.example.com"), "w1@box.example.com");
/// assert_eq!(node_name("w1@%n", "box.example.com"), "w1@box");
/// assert_eq!(node_name("%h", "box"), "celery@box");
/// ```
pub fn node_name(template: &str, host: &str) -> String {
    let (short, domain) = host.split_once('.').unwrap_or((host, ""));
    let mut name = String::with_capacity(template.len() + host.len());
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            name.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => name.push_str(host),
            Some('n') => name.push_str(short),
            Some('d') => name.push_str(domain),
            Some('%') => name.push('%'),
            Some(other) => {
                name.push('%');
                name.push(other);
            }
            None => name.push('%'),
        }
    }
    if name.contains('@') {
        name
    } else {
        format!("celery@{name}")
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> ControlRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_celery_ping_reads_and_writes_back_the_same() {
        let sent = json!({"method":"ping","arguments":{},"destination":null,"pattern":null,
            "matcher":null,"ticket":"a140","reply_to":{"exchange":"reply.celery.pidbox","routing_key":"8bfd"}});
        let ping = request(sent.clone());
        assert_eq!(ping.reply_to.as_ref().unwrap().routing_key, "8bfd");
        assert_eq!(serde_json::to_value(&ping).unwrap(), sent);
        // A cast has neither ticket nor reply_to.
        let cast = request(json!({"method":"heartbeat","arguments":{},"destination":null}));
        let written = serde_json::to_value(&cast).unwrap();
        assert!(written.get("ticket").is_none() && written.get("reply_to").is_none());
    }

    #[test]
    fn destination_and_patterns_choose_the_nodes() {
        let all = request(json!({"method":"ping"}));
        assert!(all.is_for("a@h"));
        let named = request(json!({"method":"ping","destination":["a@h"]}));
        assert!(named.is_for("a@h") && !named.is_for("b@h"));
        let glob = request(json!({"method":"ping","pattern":"a*@h","matcher":"glob"}));
        assert!(glob.is_for("ab@h") && !glob.is_for("b@h"));
        let pcre = request(json!({"method":"ping","pattern":"^w[0-9]+@","matcher":"pcre"}));
        assert!(pcre.is_for("w12@h") && !pcre.is_for("wx@h"));
        let broken = request(json!({"method":"ping","pattern":"(","matcher":"pcre"}));
        assert!(!broken.is_for("w@h"));
    }

    #[test]
    fn node_names_follow_celerys_template() {
        assert_eq!(node_name("celery@%h", "vm"), "celery@vm");
        assert_eq!(node_name("w%%1@%d", "a.b.c"), "w%1@b.c");
    }
}

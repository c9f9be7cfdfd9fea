//! Broker URLs: the password replaced in messages and logs, and lists of
//! broker nodes in Celery's failover form (`amqp://a;amqp://b;amqps://c`).
//!
//! A list is split on `;`. A `;` that is not followed by another URL (a
//! scheme and `://`) or by the end of an entry belongs to the entry before
//! it (a password with a `;` in it): `amqp://u:pa;ss@host` is one node.

use std::fmt;
use std::ops::Range;

use lapin::uri::AMQPUri;

use super::BrokerError;

/// What separates the nodes of a failover list (`amqp://a;amqp://b`), as in
/// Celery's `broker_url`.
pub const NODE_SEPARATOR: char = ';';

/// The URL with its password replaced by `***`, for messages and logs
/// (`amqp://user:***@host:port/vhost`); every node of a `;` list is
/// redacted. What is not a password is left as written.
///
/// An entry's user information is taken to end at its last `@`, so a
/// password with an unencoded `@`, `:`, `/` or `?` is hidden too (a query
/// string with an `@` in it is hidden with it: too much rather than too
/// little).
pub fn redact(url: &str) -> String {
    let mut redacted = String::with_capacity(url.len());
    for (k, range) in node_ranges(url).into_iter().enumerate() {
        if k > 0 {
            redacted.push(NODE_SEPARATOR);
        }
        redacted.push_str(&redact_one(&url[range]));
    }
    redacted
}

/// One URL's password replaced.
fn redact_one(entry: &str) -> String {
    // Without a scheme (a mistyped URL), credentials would start the text.
    let start = entry.find("://").map_or(0, |end| end + 3);
    let Some(at) = entry.rfind('@').filter(|at| *at >= start) else {
        return entry.to_owned();
    };
    match entry[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &entry[..start + colon], &entry[at..]),
        None => entry.to_owned(),
    }
}

/// The nodes of a broker URL, split on `;` and trimmed, as written
/// (passwords included: print them through [`redact`]). A URL without `;`
/// is one node. Empty entries are kept (`"amqp://a;"` gives `["amqp://a",
/// ""]`) for the caller to refuse; [`BrokerNodes::parse`] does.
pub fn split_nodes(url: &str) -> Vec<&str> {
    node_ranges(url)
        .into_iter()
        .map(|range| url[range].trim())
        .collect()
}

/// Where each node's entry is in `url` (untrimmed): split at every `;`
/// followed by a URL (a scheme, then `://`), by another `;` or by the end.
fn node_ranges(url: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (at, _) in url.match_indices(NODE_SEPARATOR) {
        let next = url[at + 1..].trim_start();
        if next.is_empty() || next.starts_with(NODE_SEPARATOR) || starts_with_scheme(next) {
            ranges.push(start..at);
            start = at + 1;
        }
    }
    ranges.push(start..url.len());
    ranges
}

/// Whether `text` starts with a URL scheme and `://` (`amqp://`).
fn starts_with_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Whether the URL names a user (`amqp://user:pass@host`), as the URL
/// parser reads it: an `@` in the authority, before the first `/`, `?` or
/// `#`. lapin gives a URL without one the user `guest`, password `guest`.
pub(crate) fn has_userinfo(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// The broker nodes of a URL: one, or several in Celery's failover form
/// (`amqp://a;amqp://b;amqps://c`), each checked to be an `amqp://` or
/// `amqps://` URL, in the order given (the order they are tried in).
///
/// Its `Display` and `Debug` show the nodes redacted.
///
/// ```
/// use task_core::broker::BrokerNodes;
///
/// let nodes = BrokerNodes::parse("amqp://u:secret@a:5672/%2f; amqp://u:secret@b:5672/%2f")?;
/// assert_eq!(nodes.len(), 2);
/// assert_eq!(nodes.to_string(), "amqp://u:***@a:5672/%2f;amqp://u:***@b:5672/%2f");
/// # Ok::<(), task_core::broker::BrokerError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerNodes {
    nodes: Vec<NodeUrl>,
}

#[derive(Clone, PartialEq, Eq)]
struct NodeUrl {
    /// As written (trimmed), password included.
    url: String,
    uri: AMQPUri,
}

impl BrokerNodes {
    /// Splits `url` on `;` and parses every node. An empty entry, or one
    /// that is no `amqp://` / `amqps://` URL, is refused with
    /// [`BrokerError::InvalidUrl`] naming it (redacted) and, in a list,
    /// its position.
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let entries = split_nodes(url);
        let count = entries.len();
        let position = |k: usize| {
            if count > 1 {
                format!(" (node {} of {count})", k + 1)
            } else {
                String::new()
            }
        };
        let mut nodes = Vec::with_capacity(count);
        for (k, entry) in entries.into_iter().enumerate() {
            if entry.is_empty() {
                return Err(BrokerError::InvalidUrl {
                    url: redact(url),
                    reason: if count > 1 {
                        format!(
                            "node {} of {count} is empty: nodes are separated by a single `;` \
                             (amqp://host1;amqp://host2)",
                            k + 1
                        )
                    } else {
                        "the broker URL is empty".into()
                    },
                });
            }
            let uri: AMQPUri = entry.parse().map_err(|reason: String| {
                let redacted = redact(entry);
                BrokerError::InvalidUrl {
                    // The parser's message may quote the URL.
                    reason: format!("{}{}", reason.replace(entry, &redacted), position(k)),
                    url: redacted,
                }
            })?;
            nodes.push(NodeUrl {
                url: entry.to_owned(),
                uri,
            });
        }
        Ok(Self { nodes })
    }

    /// How many nodes (at least one).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a list has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes' URLs as written, passwords included: give them to a
    /// client, print them through [`redact`] or [`BrokerNodes::redacted`].
    pub fn urls(&self) -> impl Iterator<Item = &str> + '_ {
        self.nodes.iter().map(|node| node.url.as_str())
    }

    /// The nodes' URLs without their passwords, for messages and logs.
    pub fn redacted(&self) -> Vec<String> {
        self.urls().map(redact).collect()
    }

    /// Each node's URL as written and as parsed.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &AMQPUri)> + '_ {
        self.nodes.iter().map(|node| (node.url.as_str(), &node.uri))
    }
}

impl fmt::Display for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, url) in self.urls().enumerate() {
            if k > 0 {
                f.write_str(";")?;
            }
            f.write_str(&redact(url))?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.redacted()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://guest@127.0.0.1"), "amqp://guest@127.0.0.1");
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(
            redact("redis://:secret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("memory://"), "memory://");
        assert_eq!(redact(""), "");
    }

    #[test]
    fn redact_hides_passwords_with_at_signs_colons_and_slashes() {
        assert_eq!(
            redact("amqp://user:p@ss:w@rd@host:5672/vh"),
            "amqp://user:***@host:5672/vh"
        );
        assert_eq!(redact("amqp://user:a:b:c@host"), "amqp://user:***@host");
        // Unencoded `/` and `?`: the URL is invalid, and its error names it.
        assert_eq!(redact("amqp://user:a/b?c@host"), "amqp://user:***@host");
        // Percent-encoded, as it should be written.
        assert_eq!(
            redact("amqp://user:p%40ss%3Aw%3Bd@host/%2f"),
            "amqp://user:***@host/%2f"
        );
        // No scheme: the credentials start the text.
        assert_eq!(redact("user:secret@host:5672"), "user:***@host:5672");
    }

    #[test]
    fn redact_keeps_a_query_string() {
        assert_eq!(
            redact("amqp://u:secret@host:5672/%2f?heartbeat=30&connection_timeout=5000"),
            "amqp://u:***@host:5672/%2f?heartbeat=30&connection_timeout=5000"
        );
        assert_eq!(
            redact("amqp://host:5672/%2f?heartbeat=30"),
            "amqp://host:5672/%2f?heartbeat=30"
        );
    }

    #[test]
    fn redact_hides_every_node_of_a_list() {
        assert_eq!(
            redact("amqp://a:s1@h1/%2f;amqp://b:s2@h2/%2f; amqps://c:s@3@h3"),
            "amqp://a:***@h1/%2f;amqp://b:***@h2/%2f; amqps://c:***@h3"
        );
        assert_eq!(
            redact("amqp://h1;amqp://u:secret@h2"),
            "amqp://h1;amqp://u:***@h2"
        );
        // A `;` in a password is no separator: the whole password is hidden.
        assert_eq!(
            redact("amqp://u:pa;ss@h1;amqp://u:x;y;z@h2"),
            "amqp://u:***@h1;amqp://u:***@h2"
        );
        assert_eq!(redact("amqp://u:s@h1;"), "amqp://u:***@h1;");
        for url in [
            "amqp://u:secret@h1;amqp://v:secret@h2",
            "amqp://u:sec;ret@h1 ; amqp://u:secret@h2;;",
            "amqps://u:se@cr:et@h1/%2f?heartbeat=5;amqp://u:secret@h2",
        ] {
            let redacted = redact(url);
            assert!(!redacted.contains("sec"), "{url} -> {redacted}");
        }
    }

    #[test]
    fn a_list_splits_on_semicolons_before_urls_trimmed() {
        assert_eq!(split_nodes("amqp://a"), ["amqp://a"]);
        assert_eq!(
            split_nodes(" amqp://a ; amqp://b;amqps://c "),
            ["amqp://a", "amqp://b", "amqps://c"]
        );
        assert_eq!(split_nodes("amqp://a;"), ["amqp://a", ""]);
        assert_eq!(
            split_nodes("amqp://a;;amqp://b"),
            ["amqp://a", "", "amqp://b"]
        );
        assert_eq!(split_nodes(""), [""]);
        // A `;` in a password.
        assert_eq!(
            split_nodes("amqp://u:pa;ss@a;amqp://b"),
            ["amqp://u:pa;ss@a", "amqp://b"]
        );
    }

    #[test]
    fn parsed_nodes_keep_their_order_and_show_redacted() {
        let nodes = BrokerNodes::parse("amqp://u:s1@a:1/%2f ; amqps://b:2/v; amqp://c").unwrap();
        assert_eq!(nodes.len(), 3);
        assert!(!nodes.is_empty());
        assert_eq!(
            nodes.urls().collect::<Vec<_>>(),
            ["amqp://u:s1@a:1/%2f", "amqps://b:2/v", "amqp://c"]
        );
        assert_eq!(
            nodes.redacted(),
            ["amqp://u:***@a:1/%2f", "amqps://b:2/v", "amqp://c"]
        );
        assert_eq!(
            nodes.to_string(),
            "amqp://u:***@a:1/%2f;amqps://b:2/v;amqp://c"
        );
        assert!(!format!("{nodes:?}").contains("s1"));
        let hosts: Vec<(String, u16)> = nodes
            .entries()
            .map(|(_, uri)| (uri.authority.host.clone(), uri.authority.port))
            .collect();
        assert_eq!(
            hosts,
            [("a".into(), 1), ("b".into(), 2), ("c".into(), 5672)]
        );
    }

    #[test]
    fn empty_and_invalid_entries_are_refused_redacted() {
        for (url, shown, why) in [
            ("", "", "the broker URL is empty"),
            (
                "amqp://u:secret@a;",
                "amqp://u:***@a;",
                "node 2 of 2 is empty",
            ),
            (
                "amqp://u:secret@a;;amqp://b",
                "amqp://u:***@a;;amqp://b",
                "node 2 of 3 is empty",
            ),
            (
                "amqp://a;redis://u:secret@b",
                "redis://u:***@b",
                "(node 2 of 2)",
            ),
            ("amqp:u:secret@host", "amqp:***@host", "Invalid URL"),
            (
                "amqp://u:secret@host:notaport",
                "amqp://u:***@host:notaport",
                "",
            ),
        ] {
            match BrokerNodes::parse(url) {
                Err(BrokerError::InvalidUrl { url: named, reason }) => {
                    assert_eq!(named, shown, "{url}");
                    assert!(reason.contains(why), "{url}: {reason}");
                    assert!(!reason.contains("secret"), "{url}: {reason}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn userinfo_is_read_from_the_authority_only() {
        assert!(has_userinfo("amqp://u:p@host/%2f"));
        assert!(has_userinfo("amqp://u@host"));
        assert!(has_userinfo("amqp://u:p@ss@host"));
        assert!(!has_userinfo("amqp://host:5672/%2f"));
        assert!(!has_userinfo("amqp://host/v@x"));
        assert!(!has_userinfo("amqp://host/%2f?x=a@b"));
        assert!(!has_userinfo("host"));
    }
}

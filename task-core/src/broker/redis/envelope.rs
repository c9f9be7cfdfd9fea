//! The JSON envelope kombu's virtual transports put around a message
//! (`{"body", "content-encoding", "content-type", "headers",
//! "properties": {..., "delivery_info", "delivery_tag", "body_encoding"}}`),
//! written and read as kombu 5.7 does: the body base64-encoded
//! (`body_encoding: "base64"`, kombu's default) or as plain text when the
//! envelope says no encoding.

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::broker::{Headers, Message, Properties};

/// Where a message was published: kombu's `delivery_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeliveryInfo {
    /// The exchange (`""`: straight to the queue named by the key).
    #[serde(default)]
    pub(crate) exchange: String,
    /// The routing key.
    #[serde(default)]
    pub(crate) routing_key: String,
    /// Set by kombu (and here) on a message restored to its queue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) redelivered: bool,
}

#[derive(Serialize)]
struct OutEnvelope<'a> {
    body: Cow<'a, str>,
    #[serde(rename = "content-encoding")]
    content_encoding: Option<&'a str>,
    #[serde(rename = "content-type")]
    content_type: Option<&'a str>,
    headers: Map<String, Value>,
    properties: OutProperties<'a>,
}

#[derive(Serialize)]
struct OutProperties<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    delivery_mode: u8,
    delivery_info: &'a DeliveryInfo,
    /// Left out when the message has none (kombu reads a missing one as
    /// 0), so that none comes back as none.
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<&'a str>,
    body_encoding: &'static str,
    delivery_tag: &'a str,
}

/// `message` as kombu's envelope, published to `exchange` with
/// `routing_key`, under the delivery tag `tag`.
pub(crate) fn encode(message: &Message, info: &DeliveryInfo, tag: &str) -> String {
    let properties = &message.properties;
    let envelope = OutEnvelope {
        body: Cow::Owned(base64::engine::general_purpose::STANDARD.encode(&message.body)),
        content_encoding: properties.content_encoding.as_deref(),
        content_type: properties.content_type.as_deref(),
        headers: properties.headers.to_json(),
        properties: OutProperties {
            correlation_id: properties.correlation_id.as_deref(),
            reply_to: properties.reply_to.as_deref(),
            delivery_mode: if properties.persistent { 2 } else { 1 },
            delivery_info: info,
            priority: properties.priority,
            expiration: properties.expiration.as_deref(),
            body_encoding: "base64",
            delivery_tag: tag,
        },
    };
    // Serializing owned JSON values and strings cannot fail.
    serde_json::to_string(&envelope).unwrap_or_default()
}

#[derive(Deserialize)]
struct InEnvelope {
    #[serde(default)]
    body: Value,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    properties: InProperties,
}

#[derive(Deserialize, Default)]
struct InProperties {
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    delivery_mode: Option<u8>,
    #[serde(default)]
    delivery_info: DeliveryInfo,
    #[serde(default)]
    priority: Option<Value>,
    #[serde(default)]
    expiration: Option<Value>,
    #[serde(default)]
    body_encoding: Option<String>,
}

/// A message read from a list or a channel.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) message: Message,
    pub(crate) info: DeliveryInfo,
}

/// Why an envelope could not be read (the raw text is kept by the caller).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("not a kombu envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("its body is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("its body encoding `{0}` is not one kombu writes (base64 or none)")]
    BodyEncoding(String),
}

/// Reads an envelope.
pub(crate) fn decode(raw: &[u8]) -> Result<Decoded, EnvelopeError> {
    let envelope: InEnvelope = serde_json::from_slice(raw)?;
    let props = envelope.properties;
    let body = match (props.body_encoding.as_deref(), envelope.body) {
        (_, Value::Null) => Vec::new(),
        (Some("base64"), Value::String(text)) => {
            base64::engine::general_purpose::STANDARD.decode(text.as_bytes())?
        }
        (None | Some(""), Value::String(text)) => text.into_bytes(),
        (None | Some(""), other) => other.to_string().into_bytes(),
        (Some(other), _) => return Err(EnvelopeError::BodyEncoding(other.to_owned())),
    };
    let mut headers = envelope.headers.unwrap_or_default();
    // kombu marks a restored message in its headers too; it is the
    // transport's, not the application's.
    let restored = matches!(headers.remove("redelivered"), Some(Value::Bool(true)));
    let mut info = props.delivery_info;
    info.redelivered |= restored;
    let priority = props
        .priority
        .as_ref()
        .and_then(Value::as_u64)
        .map(|p| p.min(u64::from(u8::MAX)) as u8);
    let expiration = props.expiration.and_then(|value| match value {
        Value::String(text) => Some(text),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let message = Message {
        properties: Properties {
            content_type: envelope.content_type.map(known_text),
            content_encoding: envelope.content_encoding.map(known_text),
            correlation_id: props.correlation_id,
            reply_to: props.reply_to,
            persistent: props.delivery_mode == Some(2),
            priority,
            expiration,
            headers: Headers::from_json(&headers),
        },
        body,
    };
    Ok(Decoded { message, info })
}

/// The common content types and encodings borrowed, the rest owned.
fn known_text(text: String) -> Cow<'static, str> {
    match text.as_str() {
        "application/json" => Cow::Borrowed("application/json"),
        "utf-8" => Cow::Borrowed("utf-8"),
        "binary" => Cow::Borrowed("binary"),
        _ => Cow::Owned(text),
    }
}

/// The same envelope marked as redelivered (`headers.redelivered` and
/// `properties.delivery_info.redelivered`, as kombu marks a restored
/// message); the rest kept as it was. `None` if it is not a JSON object.
pub(crate) fn mark_redelivered(raw: &str) -> Option<String> {
    let mut envelope: Value = serde_json::from_str(raw).ok()?;
    let object = envelope.as_object_mut()?;
    if let Some(Value::Object(headers)) = object.get_mut("headers") {
        headers.insert("redelivered".into(), Value::Bool(true));
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        if let Some(Value::Object(info)) = properties.get_mut("delivery_info") {
            info.insert("redelivered".into(), Value::Bool(true));
        }
    }
    serde_json::to_string(&envelope).ok()
}

/// The priority an envelope asks for (`properties.priority`, 0 without).
pub(crate) fn priority_of(raw: &str) -> u8 {
    #[derive(Deserialize)]
    struct Only {
        #[serde(default)]
        properties: OnlyPriority,
    }
    #[derive(Deserialize, Default)]
    struct OnlyPriority {
        #[serde(default)]
        priority: Option<Value>,
    }
    serde_json::from_str::<Only>(raw)
        .ok()
        .and_then(|only| only.properties.priority)
        .and_then(|p| p.as_u64())
        .map_or(0, |p| p.min(u64::from(u8::MAX)) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task message as Celery 5.7 puts it in Redis (captured).
    const CELERY: &str = r#"{"body": "W1syLCAzXSwgeyJ4IjogMX0sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "2089bbcb-8c93-4a57-9cde-5c513d762eb6", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "2089bbcb-8c93-4a57-9cde-5c513d762eb6", "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{'x': 1}", "origin": "gen6430@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "2089bbcb-8c93-4a57-9cde-5c513d762eb6", "reply_to": "4d045cd2-13ea-34f0-8772-efd676d3edbd", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "capq_1"}, "priority": 5, "body_encoding": "base64", "delivery_tag": "ddb9f0c7-42a3-412b-85bc-576c53916b36"}}"#;

    #[test]
    fn a_celery_message_is_read_whole() {
        let decoded = decode(CELERY.as_bytes()).unwrap();
        let message = &decoded.message;
        assert_eq!(
            message.body,
            br#"[[2, 3], {"x": 1}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
        );
        assert_eq!(
            message.properties.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(message.properties.priority, Some(5));
        assert!(message.properties.persistent);
        assert_eq!(
            message.properties.headers.get_str("task"),
            Some("tasks.add")
        );
        assert_eq!(decoded.info.routing_key, "capq_1");
        assert!(!decoded.info.redelivered);
        assert_eq!(priority_of(CELERY), 5);
    }

    #[test]
    fn an_encoded_message_reads_back_the_same() {
        let mut headers = Headers::new();
        headers.insert_str("task", "tasks.add");
        let message = Message {
            properties: Properties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                correlation_id: Some("id-1".into()),
                reply_to: Some("reply".into()),
                persistent: true,
                priority: Some(3),
                expiration: None,
                headers,
            },
            body: b"[[1], {}, {}]".to_vec(),
        };
        let info = DeliveryInfo {
            exchange: String::new(),
            routing_key: "q".into(),
            redelivered: false,
        };
        let raw = encode(&message, &info, "tag-1");
        let decoded = decode(raw.as_bytes()).unwrap();
        assert_eq!(decoded.message, message);
        assert_eq!(decoded.info, info);
        assert!(raw.contains(r#""delivery_tag":"tag-1""#));

        let bare = Message::default();
        let raw = encode(&bare, &info, "tag-2");
        assert!(!raw.contains("priority"), "{raw}");
        assert_eq!(decode(raw.as_bytes()).unwrap().message, bare);
        assert_eq!(priority_of(&raw), 0, "kombu's default");
    }

    #[test]
    fn a_restored_message_is_marked_redelivered_without_the_header() {
        let marked = mark_redelivered(CELERY).unwrap();
        let decoded = decode(marked.as_bytes()).unwrap();
        assert!(decoded.info.redelivered);
        assert!(!decoded
            .message
            .properties
            .headers
            .contains_key("redelivered"));
    }

    #[test]
    fn a_plain_body_and_broken_envelopes() {
        let plain = r#"{"body": "hello", "properties": {"delivery_info": {}}}"#;
        assert_eq!(decode(plain.as_bytes()).unwrap().message.body, b"hello");
        assert!(matches!(decode(b"not json"), Err(EnvelopeError::Json(_))));
        let bad = r#"{"body": "@@", "properties": {"body_encoding": "base64"}}"#;
        assert!(matches!(
            decode(bad.as_bytes()),
            Err(EnvelopeError::Base64(_))
        ));
        let odd = r#"{"body": "x", "properties": {"body_encoding": "rot13"}}"#;
        assert!(matches!(
            decode(odd.as_bytes()),
            Err(EnvelopeError::BodyEncoding(_))
        ));
    }
}

//! Property tests of the task-message decoder: random and mutated messages
//! never make it panic, and whatever it accepts can be turned into a call.

use lapin::types::{ByteArray, DecimalValue, FieldArray};
use proptest::prelude::*;
use serde_json::Value;
use task_core::broker::{HeaderValue, Headers, Message, Properties};
use task_core::protocol::task_message::{decode_task, encode_task, PartialRequest, TaskCall};
use task_core::TaskArgs;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any AMQP header value a peer could send: every numeric width, text that
/// is or is not UTF-8, byte arrays, timestamps, decimals, arrays and tables.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let leaf = prop_oneof![
        Just(HeaderValue::Void),
        any::<bool>().prop_map(HeaderValue::Boolean),
        any::<i8>().prop_map(HeaderValue::ShortShortInt),
        any::<u8>().prop_map(HeaderValue::ShortShortUInt),
        any::<i16>().prop_map(HeaderValue::ShortInt),
        any::<u16>().prop_map(HeaderValue::ShortUInt),
        any::<i32>().prop_map(HeaderValue::LongInt),
        any::<u32>().prop_map(HeaderValue::LongUInt),
        any::<i64>().prop_map(HeaderValue::LongLongInt),
        any::<u64>().prop_map(HeaderValue::Timestamp),
        any::<f32>().prop_map(HeaderValue::Float),
        any::<f64>().prop_map(HeaderValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| HeaderValue::DecimalValue(DecimalValue { scale, value })),
        ".{0,20}".prop_map(|s: String| HeaderValue::ShortString(s.as_str().into())),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(|b| HeaderValue::LongString(b.into())),
        ".{0,20}".prop_map(|s: String| HeaderValue::LongString(s.into())),
        prop::collection::vec(any::<u8>(), 0..12)
            .prop_map(|b| HeaderValue::ByteArray(ByteArray::from(b))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| HeaderValue::FieldArray(FieldArray::from(items))),
            prop::collection::vec((".{0,8}", inner), 0..4).prop_map(|entries| {
                let headers: Headers = entries
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                HeaderValue::FieldTable(headers.to_field_table())
            }),
        ]
    })
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, HeaderValue)>> {
    let known = prop::sample::select(vec![
        "task",
        "id",
        "eta",
        "expires",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "group",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "lang",
        "shadow",
        "stamps",
    ]);
    let value = prop_oneof![
        header_value(),
        json_value().prop_map(|json| {
            let mut one = Headers::new();
            one.insert_json("v", &json);
            one.remove("v").unwrap_or(HeaderValue::Void)
        }),
    ];
    prop::collection::vec((known, value), 0..10)
}

fn valid_message() -> Message {
    let args = [
        serde_json::value::to_raw_value(&2).unwrap(),
        serde_json::value::to_raw_value(&"é").unwrap(),
    ];
    let kwargs = [(
        "k".to_owned(),
        serde_json::value::to_raw_value(&[1, 2]).unwrap(),
    )];
    encode_task(&TaskCall {
        id: "id",
        name: "tasks.add",
        args: &args,
        kwargs: &kwargs,
        reply_to: Some("r"),
        eta: None,
        expires: None,
        priority: None,
        time_limit: Some(1.0),
        soft_time_limit: None,
        ignore_result: false,
        retries: 0,
        root_id: None,
        parent_id: None,
    })
    .unwrap()
}

/// Runs the decoder and, on success, the argument decoder, like a worker.
fn exercise(message: &Message) {
    let _ = PartialRequest::of(message);
    if let Ok(request) = decode_task(message) {
        let _ = request.time_limits();
        let mut args = TaskArgs::new("fuzz", request.args, request.kwargs);
        let _ = args.take::<i64>(0, "x");
        let _ = args.take::<String>(1, "y");
        let _ = args.take::<Option<Vec<u8>>>(2, "k");
        let _ = args.finish();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bodies_and_headers_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..256),
        headers in headers(),
        content_type in prop::option::of(prop::sample::select(vec!["application/json", "application/x-python-serialize", "text/plain", ""])),
    ) {
        let message = Message {
            properties: Properties {
                content_type: content_type.map(|t| t.to_owned().into()),
                headers: headers.into_iter().collect(),
                ..Properties::default()
            },
            body,
        };
        exercise(&message);
    }

    #[test]
    fn random_json_bodies_never_panic(body in json_value(), headers in headers()) {
        let mut message = valid_message();
        message.body = serde_json::to_vec(&body).unwrap();
        for (key, value) in headers {
            message.properties.headers.insert(key, value);
        }
        exercise(&message);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut message = valid_message();
        for (index, byte) in flips {
            let i = index.index(message.body.len());
            message.body[i] = byte;
        }
        if truncate {
            let at = cut.index(message.body.len());
            message.body.truncate(at);
        }
        exercise(&message);
    }
}

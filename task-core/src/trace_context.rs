//! [`TraceParent`]: W3C trace context (`traceparent`), carried in task
//! messages' headers from `.delay()` to the worker and on into the calls a
//! task makes, so that one request's tasks share a trace id. The header is
//! the one OpenTelemetry's propagators (and `opentelemetry-instrumentation
//! -celery`) read and write.
//!
//! With the cargo feature `opentelemetry` and an `OpenTelemetryLayer`
//! (crate `tracing-opentelemetry`) in the process's `tracing` subscriber,
//! the spans are OpenTelemetry's own: a worker's `task` span is the child of
//! the `traceparent` its message carried (a Rust client's span, a calling
//! task's, or a Python client's under `opentelemetry-instrumentation-celery`),
//! its ids are what [`TaskContext::trace`](crate::TaskContext::trace) gives,
//! and a call made inside any span carries that span as its parent. So
//! clients, workers and instrumented Python peers export one connected
//! trace. Without the layer, the feature changes nothing.

use std::fmt;

#[cfg(feature = "opentelemetry")]
pub(crate) mod otel;

/// The message header the trace context travels in.
pub const TRACEPARENT: &str = "traceparent";

/// A position in a trace: the trace, the span (here: the task, or the
/// client call that sent it) and whether it is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace's id (never zero).
    pub trace_id: u128,
    /// The span's id (never zero).
    pub span_id: u64,
    /// Whether the trace is recorded (W3C's `sampled` flag).
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace, sampled, with a random id and span.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            ..*self
        }
    }

    /// Reads a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`); `None`
    /// for anything else, all-zero ids included, as W3C says.
    pub fn parse(text: &str) -> Option<Self> {
        // Read on every delivery: bytes at fixed offsets, no splitting.
        let bytes = text.trim().as_bytes();
        let (version, rest) = (bytes.get(..2)?, bytes.get(2..)?);
        if version == b"ff" || rest.len() < 53 {
            return None;
        }
        // Version 00 is exactly 55 bytes; later ones may add `-` fields.
        if (version == b"00" && rest.len() != 53) || (rest.len() > 53 && rest[53] != b'-') {
            return None;
        }
        hex(version)?;
        if rest[0] != b'-' || rest[33] != b'-' || rest[50] != b'-' {
            return None;
        }
        let trace_id = hex(&rest[1..33]).filter(|id| *id != 0)?;
        let span_id = hex(&rest[34..50]).filter(|id| *id != 0)?;
        let flags = hex(&rest[51..53])?;
        Some(Self {
            trace_id,
            span_id: u64::try_from(span_id).ok()?,
            sampled: flags & 1 == 1,
        })
    }
}

/// The value of lowercase or uppercase hex digits (at most 32).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

impl TraceParent {
    /// The `traceparent` header value: written into every task message,
    /// as one allocation.
    pub fn header_value(&self) -> crate::broker::HeaderValue {
        crate::broker::HeaderValue::LongString(self.to_bytes().to_vec().into())
    }

    /// The W3C text, in ASCII (hex by hand, not through `{:x}`).
    fn to_bytes(self) -> [u8; 55] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, slot) in text[3..35].iter_mut().enumerate() {
            *slot = DIGITS[(self.trace_id >> (124 - 4 * i) & 0xf) as usize];
        }
        for (i, slot) in text[36..52].iter_mut().enumerate() {
            *slot = DIGITS[(self.span_id >> (60 - 4 * i) & 0xf) as usize];
        }
        text[54] = if self.sampled { b'1' } else { b'0' };
        text
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII digits and dashes were written.
        f.write_str(std::str::from_utf8(&self.to_bytes()).map_err(|_| fmt::Error)?)
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_values_read_and_write_back_the_same() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(text).unwrap();
        assert!(parent.sampled);
        assert_eq!(parent.to_string(), text);
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
    }

    #[test]
    fn malformed_or_zero_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00+4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        let mut headers = crate::broker::Headers::new();
        headers.insert(TRACEPARENT, root.header_value());
        assert_eq!(
            headers.get_str(TRACEPARENT),
            Some(root.to_string().as_str())
        );
        // A later version may carry more fields; the first four are read.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what";
        let parsed = TraceParent::parse(later).unwrap();
        assert!(!parsed.sampled);
        assert_eq!(parsed.span_id, 0x00f0_67aa_0ba9_02b7);
    }
}

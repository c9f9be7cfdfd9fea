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
        let mut parts = text.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        // Version 00 has exactly four fields; later ones may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|id| *id != 0)?;
        let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
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
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}

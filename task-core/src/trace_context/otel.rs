//! The OpenTelemetry bridge (cargo feature `opentelemetry`; see the parent
//! module): `tracing` spans' OpenTelemetry ids, read and set.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceParent;

/// Makes `span` (a task's) the child of `carried` (its message's
/// `traceparent`) and returns its place in the trace: `None` when no
/// OpenTelemetry layer records it.
pub(crate) fn join(span: &tracing::Span, carried: Option<TraceParent>) -> Option<TraceParent> {
    if let Some(parent) = carried {
        // Refused only when no layer records the span: nothing to join.
        let _ = span.set_parent(remote(parent));
    }
    of(span.context().span().span_context())
}

/// The current `tracing` span's place in its OpenTelemetry trace, if a
/// layer records it: the parent of a call made now.
pub(crate) fn current() -> Option<TraceParent> {
    of(tracing::Span::current().context().span().span_context())
}

/// `parent` as a remote OpenTelemetry context.
fn remote(parent: TraceParent) -> opentelemetry::Context {
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let span = SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.span_id.to_be_bytes()),
        flags,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(span)
}

/// A valid span context as a [`TraceParent`].
fn of(span: &SpanContext) -> Option<TraceParent> {
    span.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(span.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(span.span_id().to_bytes()),
        sampled: span.is_sampled(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_and_its_remote_context_are_the_same_ids() {
        let parent = TraceParent::new_root();
        let cx = remote(parent);
        assert!(cx.span().span_context().is_remote());
        assert_eq!(of(cx.span().span_context()), Some(parent));
    }

    #[test]
    fn without_a_layer_nothing_is_joined_and_nothing_is_current() {
        let span = tracing::info_span!("task");
        assert_eq!(join(&span, Some(TraceParent::new_root())), None);
        assert_eq!(current(), None);
    }
}

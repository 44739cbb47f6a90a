//! Attributes on the span of the activity that is running.
//!
//! The Temporal SDK's OpenTelemetry plugin opens a `RunActivity:<name>` span around each
//! activity, as a child of the workflow's span (the context travels in Temporal headers, so it
//! holds when the activity runs in another process), and makes it the current OpenTelemetry
//! context while the activity runs. The activities only say what they did on it. With tracing
//! off there is no recording span and this does nothing.

use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};

/// The attribute naming the execution a span belongs to.
pub const EXECUTION_ID: &str = "stigmer.execution.id";

/// Sets `attributes` on the current span, if one is recording.
pub fn annotate(attributes: impl IntoIterator<Item = KeyValue>) {
    let cx = Context::current();
    let span = cx.span();
    if span.is_recording() {
        for attribute in attributes {
            span.set_attribute(attribute);
        }
    }
}

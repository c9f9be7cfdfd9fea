//! [`ResultSink`]: where a pipeline's results for the caller go.

use crate::backend::{BackendError, ResultRecord};

/// Where results for a task's caller go: the caller's reply queue or the
/// result backend for a worker, the caller's waiting handle in eager mode.
#[async_trait::async_trait]
pub trait ResultSink: Send + Sync {
    /// Hands `record` to the caller (publishes it to its reply queue, or
    /// stores it in the result backend). An error means it is not stored:
    /// the worker then does not ack the task's message. A caller that is
    /// gone (`rpc://`) is no error: the sink reports it itself.
    async fn publish_result(&self, record: &ResultRecord<'_>) -> Result<(), BackendError>;
}

//! [`ResultSink`]: where a pipeline's results for the caller go.

use crate::broker::Message;

/// Where results for a task's caller go: the broker's reply queues for a
/// worker, the caller's waiting handle in eager mode. Publishing a result
/// never fails the task: a sink reports what it could not deliver itself.
#[async_trait::async_trait]
pub trait ResultSink: Send + Sync {
    /// Sends `message` (a result, its `correlation_id` the task id) to the
    /// caller's queue `reply_to`.
    async fn publish_result(&self, reply_to: &str, message: Message);
}

//! [`BackendError`]: what can go wrong storing or reading results.

/// A result backend failed or refused, or what it holds is not a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend URL could not be read or names no supported backend.
    #[error("invalid result backend URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, its password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The first connection to the backend failed.
    #[error("could not connect to the result backend {url}: {source}")]
    Connect {
        /// The URL, its password hidden.
        url: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An operation failed (the backend is unreachable, timed out or
    /// refused the command); it may succeed when tried again.
    #[error("result backend {operation} failed: {source}")]
    Operation {
        /// What was being done (`"store"`, `"get"`, ...).
        operation: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A value stored under a result key is not a Celery result (corrupt,
    /// or written by something else).
    #[error("the value stored for {key} is not a Celery result: {reason}")]
    Corrupt {
        /// The key read.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend cannot do this (e.g. `rpc://` cannot read a result by
    /// id: only the process that sent a task receives its result).
    #[error("the {backend} result backend cannot {operation}")]
    Unsupported {
        /// The backend (`"rpc://"`).
        backend: &'static str,
        /// What was asked.
        operation: &'static str,
    },
}

impl BackendError {
    /// Whether trying again may succeed (a lost connection, a timeout), as
    /// opposed to a refusal that will not change (a corrupt value, an
    /// unsupported operation, a bad URL).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Operation { .. } | Self::Connect { .. })
    }

    pub(crate) fn operation(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Operation {
            operation,
            source: Box::new(source),
        }
    }
}

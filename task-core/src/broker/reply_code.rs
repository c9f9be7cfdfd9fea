//! AMQP 0-9-1 reply codes: why the broker refused an operation or closed a
//! channel or connection (`channel.close` / `connection.close`), typed, so
//! that callers check `406` rather than search an error message for
//! `PRECONDITION_FAILED`. Read from lapin's errors (its
//! `ErrorKind::ProtocolError`), and given by `memory://` for the same
//! situations.

use std::fmt;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// An AMQP reply code, as RabbitMQ sends it when it refuses something.
///
/// Soft errors (3xx, 403–406) close the channel the operation ran on; hard
/// errors (320, 402, 5xx) close the whole connection
/// ([`ReplyCode::closes_connection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyCode {
    /// 311: the message is too large for the broker.
    ContentTooLarge,
    /// 312: a mandatory message could not be routed (sent with `basic.return`).
    NoRoute,
    /// 313: an immediate message found no consumer.
    NoConsumers,
    /// 320: the broker closed the connection (an operator, a shutdown).
    ConnectionForced,
    /// 402: the virtual host does not exist.
    InvalidPath,
    /// 403: not allowed: permissions, a reserved `amq.` name, the default exchange.
    AccessRefused,
    /// 404: the queue or exchange does not exist.
    NotFound,
    /// 405: the queue is exclusive to another connection.
    ResourceLocked,
    /// 406: the object exists with other settings, an argument is invalid,
    /// or a delivery tag is unknown.
    PreconditionFailed,
    /// 501: a malformed frame.
    FrameError,
    /// 502: a frame with bad field values.
    SyntaxError,
    /// 503: a method not allowed at this point.
    CommandInvalid,
    /// 504: a channel that is not open, or already open.
    ChannelError,
    /// 505: a frame the broker did not expect.
    UnexpectedFrame,
    /// 506: the broker ran out of a resource (channels, memory).
    ResourceError,
    /// 530: not allowed (e.g. the user may not use the virtual host).
    NotAllowed,
    /// 540: not implemented by the broker.
    NotImplemented,
    /// 541: the broker failed internally.
    InternalError,
}

impl ReplyCode {
    /// Every reply code.
    pub const ALL: [ReplyCode; 18] = [
        ReplyCode::ContentTooLarge,
        ReplyCode::NoRoute,
        ReplyCode::NoConsumers,
        ReplyCode::ConnectionForced,
        ReplyCode::InvalidPath,
        ReplyCode::AccessRefused,
        ReplyCode::NotFound,
        ReplyCode::ResourceLocked,
        ReplyCode::PreconditionFailed,
        ReplyCode::FrameError,
        ReplyCode::SyntaxError,
        ReplyCode::CommandInvalid,
        ReplyCode::ChannelError,
        ReplyCode::UnexpectedFrame,
        ReplyCode::ResourceError,
        ReplyCode::NotAllowed,
        ReplyCode::NotImplemented,
        ReplyCode::InternalError,
    ];

    /// The number on the wire (`406`).
    pub const fn code(self) -> u16 {
        match self {
            ReplyCode::ContentTooLarge => 311,
            ReplyCode::NoRoute => 312,
            ReplyCode::NoConsumers => 313,
            ReplyCode::ConnectionForced => 320,
            ReplyCode::InvalidPath => 402,
            ReplyCode::AccessRefused => 403,
            ReplyCode::NotFound => 404,
            ReplyCode::ResourceLocked => 405,
            ReplyCode::PreconditionFailed => 406,
            ReplyCode::FrameError => 501,
            ReplyCode::SyntaxError => 502,
            ReplyCode::CommandInvalid => 503,
            ReplyCode::ChannelError => 504,
            ReplyCode::UnexpectedFrame => 505,
            ReplyCode::ResourceError => 506,
            ReplyCode::NotAllowed => 530,
            ReplyCode::NotImplemented => 540,
            ReplyCode::InternalError => 541,
        }
    }

    /// The reply code numbered `code`, if AMQP 0-9-1 defines one.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|reply| reply.code() == code)
    }

    /// Its name as RabbitMQ starts its reply text with (`PRECONDITION_FAILED`).
    pub const fn name(self) -> &'static str {
        match self {
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Whether the broker closes the whole connection with this code (an
    /// AMQP hard error), not just the channel.
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            ReplyCode::ConnectionForced
                | ReplyCode::InvalidPath
                | ReplyCode::FrameError
                | ReplyCode::SyntaxError
                | ReplyCode::CommandInvalid
                | ReplyCode::ChannelError
                | ReplyCode::UnexpectedFrame
                | ReplyCode::ResourceError
                | ReplyCode::NotAllowed
                | ReplyCode::NotImplemented
                | ReplyCode::InternalError
        )
    }

    /// The reply code of a lapin error: the broker's, for
    /// `ErrorKind::ProtocolError`; none for anything else (a lost socket,
    /// a channel closed earlier, a local refusal).
    pub(crate) fn of_lapin(error: &lapin::Error) -> Option<Self> {
        match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => Some(Self::of_amqp_kind(amqp.kind())),
            _ => None,
        }
    }

    /// The reply code of lapin's AMQP error kind (every kind has one).
    pub(crate) fn of_amqp_kind(kind: &AMQPErrorKind) -> Self {
        match kind {
            AMQPErrorKind::Soft(soft) => match soft {
                AMQPSoftError::CONTENTTOOLARGE => ReplyCode::ContentTooLarge,
                AMQPSoftError::NOROUTE => ReplyCode::NoRoute,
                AMQPSoftError::NOCONSUMERS => ReplyCode::NoConsumers,
                AMQPSoftError::ACCESSREFUSED => ReplyCode::AccessRefused,
                AMQPSoftError::NOTFOUND => ReplyCode::NotFound,
                AMQPSoftError::RESOURCELOCKED => ReplyCode::ResourceLocked,
                AMQPSoftError::PRECONDITIONFAILED => ReplyCode::PreconditionFailed,
            },
            AMQPErrorKind::Hard(hard) => match hard {
                AMQPHardError::CONNECTIONFORCED => ReplyCode::ConnectionForced,
                AMQPHardError::INVALIDPATH => ReplyCode::InvalidPath,
                AMQPHardError::FRAMEERROR => ReplyCode::FrameError,
                AMQPHardError::SYNTAXERROR => ReplyCode::SyntaxError,
                AMQPHardError::COMMANDINVALID => ReplyCode::CommandInvalid,
                AMQPHardError::CHANNELERROR => ReplyCode::ChannelError,
                AMQPHardError::UNEXPECTEDFRAME => ReplyCode::UnexpectedFrame,
                AMQPHardError::RESOURCEERROR => ReplyCode::ResourceError,
                AMQPHardError::NOTALLOWED => ReplyCode::NotAllowed,
                AMQPHardError::NOTIMPLEMENTED => ReplyCode::NotImplemented,
                AMQPHardError::INTERNALERROR => ReplyCode::InternalError,
            },
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use lapin::protocol::AMQPError;

    use super::*;

    #[test]
    fn every_lapin_error_kind_maps_to_the_code_of_the_same_number() {
        for reply in ReplyCode::ALL {
            assert_eq!(ReplyCode::from_code(reply.code()), Some(reply));
            let kind = AMQPErrorKind::from_id(reply.code()).expect("lapin knows every code");
            assert_eq!(ReplyCode::of_amqp_kind(&kind), reply);
            assert_eq!(
                reply.closes_connection(),
                matches!(kind, AMQPErrorKind::Hard(_)),
                "{reply}"
            );
        }
        assert_eq!(ReplyCode::from_code(200), None);
        assert_eq!(
            ReplyCode::PreconditionFailed.to_string(),
            "406 PRECONDITION_FAILED"
        );
    }

    #[test]
    fn a_protocol_error_has_the_code_and_other_errors_none() {
        let refused = AMQPError::from_id(404, "NOT_FOUND - no queue 'q'".into()).unwrap();
        let error = lapin::Error::from(lapin::ErrorKind::ProtocolError(refused));
        assert_eq!(ReplyCode::of_lapin(&error), Some(ReplyCode::NotFound));
        let lost = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(ReplyCode::of_lapin(&lost), None);
    }
}

//! Why a connection to the broker could not be opened, classified from
//! lapin's errors into something a user can act on (wrong password, nothing
//! listening, not a broker, certificate problems), without lapin's types.

use std::fmt;
use std::io;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::ErrorKind;
use rustls::{AlertDescription, CertificateError};

use super::BrokerError;

/// Why the connection could not be opened (see [`BrokerError::Connect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Nothing listens at the address (connection refused).
    Refused,
    /// The host could not be reached or its name resolved; the system's
    /// explanation.
    Unreachable(String),
    /// The broker refused the user name or password (`ACCESS_REFUSED`).
    AuthenticationFailed,
    /// The broker refused the virtual host (it does not exist, or the user
    /// may not use it); the broker's explanation.
    VhostRefused(String),
    /// The peer answered, but not in AMQP 0-9-1 (another service's port).
    NotAmqp,
    /// An `amqps://` URL names a port where the peer does not speak TLS
    /// (a plaintext AMQP port, most likely).
    NotTls,
    /// The TLS handshake failed.
    Tls(TlsFailure),
    /// The peer closed the connection during the handshake without saying
    /// why. Over TLS 1.3 this is also how a refused client certificate may
    /// show: the broker checks it after the client's side of the handshake
    /// is done, and its alert can be lost in the reset.
    Closed,
    /// The connection and its handshake did not complete within
    /// [`CONNECT_TIMEOUT`](super::CONNECT_TIMEOUT): a peer that accepts the
    /// connection but never answers, or a network that drops packets.
    TimedOut,
    /// Anything else, with lapin's explanation.
    Other(String),
}

/// What went wrong in a TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The broker's certificate is not signed by a trusted authority.
    UnknownIssuer,
    /// The broker's certificate is not valid for the host name of the URL.
    WrongHostName {
        /// The host name the certificate was checked against.
        host: String,
    },
    /// The broker's certificate has expired or is not valid yet.
    Expired,
    /// The broker requires a client certificate and none was presented.
    ClientCertificateRequired,
    /// The broker refused the client certificate presented.
    ClientCertificateRefused,
    /// Another handshake failure, with rustls's explanation.
    Other(String),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownIssuer => f.write_str(
                "the broker's certificate is not signed by a trusted CA: \
                 give the CA that signed it (TlsOptions::ca_file, --tls-ca-file)",
            ),
            Self::WrongHostName { host } => write!(
                f,
                "the broker's certificate is not valid for the host name `{host}`: \
                 use a host name the certificate names"
            ),
            Self::Expired => f.write_str(
                "the broker's certificate has expired or is not valid yet: \
                 renew it, or check the clocks",
            ),
            Self::ClientCertificateRequired => f.write_str(
                "the broker requires a client certificate: give one \
                 (TlsOptions::client_cert, --tls-cert and --tls-key)",
            ),
            Self::ClientCertificateRefused => f.write_str(
                "the broker refused the client certificate: check that its CA \
                 is the one the broker trusts",
            ),
            Self::Other(reason) => write!(f, "{reason}"),
        }
    }
}

/// Where a connection was attempted, for messages: the URL without its
/// password, and `host:port`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) address: String,
    pub(crate) host: String,
}

impl Target {
    pub(crate) fn of(uri: &AMQPUri) -> Self {
        let scheme = match uri.scheme {
            AMQPScheme::AMQP => "amqp",
            AMQPScheme::AMQPS => "amqps",
        };
        let host = &uri.authority.host;
        let address = if host.contains(':') {
            format!("[{host}]:{}", uri.authority.port)
        } else {
            format!("{host}:{}", uri.authority.port)
        };
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        Self {
            url: format!(
                "{scheme}://{}@{address}/{}",
                encode(&uri.authority.userinfo.username),
                // As the default URL spells the default vhost.
                if uri.vhost == "/" {
                    "%2f".to_owned()
                } else {
                    encode(&uri.vhost)
                }
            ),
            address,
            host: host.clone(),
        }
    }
}

/// The message of a [`BrokerError::Connect`]: what failed, where, what to
/// check.
pub(crate) fn describe(url: &str, address: &str, failure: &ConnectFailure) -> String {
    match failure {
        ConnectFailure::Refused if url.starts_with("redis") => format!(
            "nothing is listening at {address} (connection refused): \
             is Redis running, is the port right?"
        ),
        ConnectFailure::Refused => format!(
            "nothing is listening at {address} (connection refused): \
             is RabbitMQ running, is the port right?"
        ),
        ConnectFailure::Unreachable(reason) => {
            format!("cannot reach {address} ({reason}): check the host name and the network")
        }
        ConnectFailure::AuthenticationFailed => {
            format!("authentication refused by {url}: check the user name and password")
        }
        ConnectFailure::VhostRefused(reason) => format!(
            "{url} refused the virtual host ({reason}): check that it exists \
             and that the user may use it"
        ),
        ConnectFailure::NotAmqp => format!(
            "the peer at {address} does not speak AMQP 0-9-1: \
             is this the broker's port (5672, 5671 for amqps)?"
        ),
        ConnectFailure::NotTls => format!(
            "the peer at {address} does not speak TLS: is this the broker's amqps port \
             (5671 by default)? A plaintext port needs amqp://"
        ),
        ConnectFailure::Tls(tls) => format!("TLS handshake with {address} failed: {tls}"),
        // In TLS 1.3 the broker checks a client certificate after the
        // client's side of the handshake is done: its refusal can arrive as
        // a reset rather than as an alert.
        ConnectFailure::Closed if url.starts_with("amqps://") => format!(
            "the peer at {address} closed the TLS connection during the handshake: if the \
             broker requires a client certificate, check that one is given and signed by a CA \
             the broker trusts; else check the broker's log"
        ),
        ConnectFailure::Closed => format!(
            "the peer at {address} closed the connection during the handshake: \
             check the broker's log"
        ),
        ConnectFailure::TimedOut => format!(
            "no answer from {address} within {} s: is this the broker's address, \
             does a firewall drop the packets?",
            super::CONNECT_TIMEOUT.as_secs()
        ),
        ConnectFailure::Other(reason) => format!("cannot connect to {url}: {reason}"),
    }
}

/// The message of a [`BrokerError::NoNodeReachable`]: every node's failure,
/// on one line, separated by `; `.
pub(crate) fn describe_attempts(attempts: &[BrokerError]) -> String {
    let failures: Vec<String> = attempts.iter().map(ToString::to_string).collect();
    format!(
        "no broker node could be reached ({} tried): {}",
        attempts.len(),
        failures.join("; ")
    )
}

/// The typed error for a connection attempt to `target` that did not
/// complete in time.
pub(crate) fn connect_timed_out(
    target: &Target,
    elapsed: tokio::time::error::Elapsed,
) -> BrokerError {
    BrokerError::Connect {
        url: target.url.clone(),
        address: target.address.clone(),
        failure: ConnectFailure::TimedOut,
        source: Box::new(elapsed),
    }
}

/// Classifies the error of a connection attempt to `target`.
pub(crate) fn classify(target: &Target, error: &lapin::Error) -> ConnectFailure {
    match error.kind() {
        ErrorKind::IOError(io) => classify_io(target, io),
        ErrorKind::ParsingError(_) | ErrorKind::InvalidProtocolVersion(_) => {
            ConnectFailure::NotAmqp
        }
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                ConnectFailure::AuthenticationFailed
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                ConnectFailure::VhostRefused(amqp.get_message().to_string())
            }
            _ => ConnectFailure::Other(amqp.get_message().to_string()),
        },
        _ => ConnectFailure::Other(error.to_string()),
    }
}

fn classify_io(target: &Target, error: &io::Error) -> ConnectFailure {
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return classify_tls(target, tls);
    }
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe => ConnectFailure::Closed,
        _ => ConnectFailure::Unreachable(error.to_string()),
    }
}

fn classify_tls(target: &Target, error: &rustls::Error) -> ConnectFailure {
    let failure = match error {
        // A plaintext peer answers a ClientHello with bytes that are no TLS
        // record (RabbitMQ sends its AMQP protocol header).
        rustls::Error::InvalidMessage(_) => return ConnectFailure::NotTls,
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => TlsFailure::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::WrongHostName {
                    host: target.host.clone(),
                }
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
            other => TlsFailure::Other(format!("the broker's certificate is invalid: {other:?}")),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            TlsFailure::ClientCertificateRequired
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied,
        ) => TlsFailure::ClientCertificateRefused,
        rustls::Error::AlertReceived(AlertDescription::HandshakeFailure) => TlsFailure::Other(
            "the broker aborted the handshake (handshake_failure): does it require a client \
             certificate, or protocol versions and ciphers this client lacks?"
                .into(),
        ),
        other => TlsFailure::Other(other.to_string()),
    };
    ConnectFailure::Tls(failure)
}

/// The typed error for a failed connection attempt to `target`.
pub(crate) fn connect_error(target: &Target, error: lapin::Error) -> BrokerError {
    BrokerError::Connect {
        url: target.url.clone(),
        address: target.address.clone(),
        failure: classify(target, &error),
        source: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_names_user_host_port_and_vhost_but_no_password() {
        let uri: AMQPUri = "amqps://worker:s3cret@broker.example:5671/%2f"
            .parse()
            .unwrap();
        let target = Target::of(&uri);
        assert_eq!(target.url, "amqps://worker@broker.example:5671/%2f");
        assert_eq!(target.address, "broker.example:5671");
        assert!(!target.url.contains("s3cret"));
    }

    #[test]
    fn every_nodes_failure_is_listed_on_one_line() {
        let refused = |port: u16| {
            let uri: AMQPUri = format!("amqp://u:s3cret@127.0.0.1:{port}/%2f")
                .parse()
                .unwrap();
            connect_error(
                &Target::of(&uri),
                lapin::Error::from(io::Error::from(io::ErrorKind::ConnectionRefused)),
            )
        };
        let error = BrokerError::NoNodeReachable {
            attempts: vec![refused(1), refused(2)],
        };
        let shown = error.to_string();
        assert_eq!(
            shown,
            "no broker node could be reached (2 tried): \
             nothing is listening at 127.0.0.1:1 (connection refused): \
             is RabbitMQ running, is the port right?; \
             nothing is listening at 127.0.0.1:2 (connection refused): \
             is RabbitMQ running, is the port right?"
        );
        assert!(!shown.contains('\n') && !shown.contains("s3cret"));
    }
}

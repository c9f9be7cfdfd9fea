//! TLS settings for `amqps://` connections: which certificate authorities
//! to trust and an optional client certificate, read from PEM files.
//!
//! The server's certificate is always verified (chain and host name) by
//! rustls; there is no switch to turn verification off, and an `amqps://`
//! connection never falls back to plaintext.

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::BrokerError;

/// How an `amqps://` connection verifies the broker and identifies itself.
///
/// The default trusts the system's root certificates (the OS store, or
/// `$SSL_CERT_FILE` / `$SSL_CERT_DIR`) and presents no client certificate.
///
/// ```
/// use task_core::broker::TlsOptions;
///
/// let tls = TlsOptions::new()
///     .ca_file("/etc/rabbitmq/ca.pem")
///     .client_cert("/etc/worker/cert.pem", "/etc/worker/key.pem");
/// # let _ = tls;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    ca_file: Option<PathBuf>,
    client_cert: Option<ClientCert>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientCert {
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl TlsOptions {
    /// Trusts the system's root certificates, presents no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the certificate authorities in this PEM file (e.g. the
    /// private CA that signed the broker's certificate), in addition to the
    /// system's roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM, optionally followed by its
    /// intermediate certificates) with its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1, unencrypted), for brokers that require one
    /// (`ssl_options.fail_if_no_peer_cert = true`).
    pub fn client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some(ClientCert {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
        });
        self
    }

    /// The CA file, if one was given.
    pub fn ca_file_path(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Reads and checks the files, for lapin: each file must hold what it
    /// is for, so a wrong path or an empty file is reported here rather
    /// than as a puzzling handshake failure.
    pub(crate) fn load(&self) -> Result<OwnedTLSConfig, BrokerError> {
        let cert_chain = match &self.ca_file {
            Some(path) => {
                let pem = read_pem(path)?;
                certificates(path, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let identity = match &self.client_cert {
            Some(ClientCert {
                cert_file,
                key_file,
            }) => {
                let pem = read_pem(cert_file)?;
                certificates(cert_file, &pem)?;
                let key = read_pem(key_file)?;
                PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| tls_file(key_file, format!("no usable private key (PEM): {e}")))?;
                Some(OwnedIdentity::PKCS8 {
                    pem: pem.into_bytes(),
                    key: key.into_bytes(),
                })
            }
            None => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// The checked PEM contents: the CA file's, and the client certificate
    /// with its key (for TLS clients other than lapin's, e.g. Redis).
    pub(crate) fn pem(&self) -> Result<TlsPem, BrokerError> {
        let OwnedTLSConfig {
            identity,
            cert_chain,
        } = self.load()?;
        let client = match identity {
            Some(OwnedIdentity::PKCS8 { pem, key }) => Some((pem, key)),
            _ => None,
        };
        Ok(TlsPem {
            ca: cert_chain.map(String::into_bytes),
            client,
        })
    }
}

/// The contents of a [`TlsOptions`]' files, checked.
pub(crate) struct TlsPem {
    /// The CA certificates (PEM).
    pub(crate) ca: Option<Vec<u8>>,
    /// The client certificate chain and its key (PEM).
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

fn read_pem(path: &Path) -> Result<String, BrokerError> {
    std::fs::read_to_string(path).map_err(|e| tls_file(path, e.to_string()))
}

/// Checks that `pem` holds at least one certificate and that all parse.
fn certificates(path: &Path, pem: &str) -> Result<(), BrokerError> {
    let mut count = 0usize;
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        certificate.map_err(|e| tls_file(path, format!("unreadable certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(tls_file(path, "no PEM certificate in the file".into()));
    }
    Ok(())
}

fn tls_file(path: &Path, reason: String) -> BrokerError {
    BrokerError::TlsFile {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_file_is_a_typed_error() {
        let missing = TlsOptions::new().ca_file("/nonexistent/ca.pem").load();
        assert!(
            matches!(&missing, Err(BrokerError::TlsFile { path, .. }) if path == Path::new("/nonexistent/ca.pem")),
            "{missing:?}"
        );
        let dir = std::env::temp_dir().join(format!("task-core-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = TlsOptions::new().ca_file(&empty).load().unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

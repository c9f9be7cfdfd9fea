//! `amqps://` against private RabbitMQ nodes with a TLS listener
//! (`common/private_broker.rs`), with certificates made by the test (rcgen):
//! the broker's certificate and host name are verified, a client
//! certificate is presented when the node requires one, and an `amqps://`
//! URL never ends up in plaintext.

mod common;
#[path = "common/private_broker.rs"]
mod private_broker;

use private_broker::{NodeTls, PrivateBroker};
#[path = "common/certs.rs"]
mod certs;

use certs::{Ca, Files};
use rcgen::ExtendedKeyUsagePurpose;
use task_core::broker::{BrokerError, ConnectFailure, TlsFailure, TlsOptions};
use task_core::{App, Error};

async fn connect(url: &str, tls: TlsOptions) -> Result<App, Error> {
    App::builder()
        .broker_url(url)
        .tls(tls)
        .set_as_default(false)
        .connect()
        .await
}

/// The failure of a connection that must fail.
fn failure(result: Result<App, Error>, case: &str) -> (ConnectFailure, String) {
    match result {
        Err(Error::Broker(error @ BrokerError::Connect { .. })) => {
            let message = error.to_string();
            let BrokerError::Connect { failure, .. } = error else {
                unreachable!()
            };
            println!("[tls] {case}: {message}");
            (failure, message)
        }
        Err(other) => panic!("{case}: expected BrokerError::Connect, got {other:?}"),
        Ok(_) => panic!("{case}: the connection opened"),
    }
}

/// Whether the node lists exactly one client connection, and it is TLS.
async fn single_connection_is_tls(node: &PrivateBroker) -> bool {
    let listed = node
        .ctl(&["list_connections", "ssl", "--quiet", "--no-table-headers"])
        .await;
    let rows: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    println!("[tls] list_connections ssl: {rows:?}");
    rows == ["true"]
}

#[tokio::test]
async fn amqps_verifies_the_brokers_certificate_and_host_name_and_never_falls_back_to_plaintext() {
    common::init_logs();
    let ca = Ca::new("task-core test CA");
    let (cert_pem, key_pem) = ca.issue(
        "localhost",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let node = PrivateBroker::start_with_tls(
        "tls-server",
        NodeTls {
            ca_pem: ca.pem(),
            cert_pem,
            key_pem,
            require_client_cert: false,
        },
    )
    .await;
    let files = Files::new("server");
    let ca_file = files.write("ca.pem", &ca.pem());

    // A certificate signed by the trusted CA, for the URL's host: TLS, and
    // the broker says so.
    let app = connect(
        &node.tls_url("localhost"),
        TlsOptions::new().ca_file(&ca_file),
    )
    .await
    .expect("a good certificate connects");
    assert!(
        single_connection_is_tls(&node).await,
        "the broker does not report the connection as ssl"
    );
    app.close().await.expect("closed");

    // The same certificate from a CA the client does not trust.
    let other_ca = files.write("other-ca.pem", &Ca::new("some other CA").pem());
    let (unknown, message) = failure(
        connect(
            &node.tls_url("localhost"),
            TlsOptions::new().ca_file(&other_ca),
        )
        .await,
        "unknown CA",
    );
    assert_eq!(unknown, ConnectFailure::Tls(TlsFailure::UnknownIssuer));
    assert!(
        message.starts_with(&format!(
            "TLS handshake with localhost:{} failed: ",
            node.tls_port()
        )) && message.contains("not signed by a trusted CA"),
        "{message}"
    );
    // Nor do the system's roots alone.
    let (system_roots, _) = failure(
        connect(&node.tls_url("localhost"), TlsOptions::new()).await,
        "system roots only",
    );
    assert_eq!(system_roots, ConnectFailure::Tls(TlsFailure::UnknownIssuer));

    // The right CA, a host name the certificate does not name.
    let (wrong_host, message) = failure(
        connect(
            &node.tls_url("127.0.0.1"),
            TlsOptions::new().ca_file(&ca_file),
        )
        .await,
        "wrong host name",
    );
    assert_eq!(
        wrong_host,
        ConnectFailure::Tls(TlsFailure::WrongHostName {
            host: "127.0.0.1".into()
        })
    );
    assert!(
        message.contains("not valid for the host name `127.0.0.1`"),
        "{message}"
    );

    // amqps:// at the plaintext AMQP port: an error, not a plaintext connection.
    let plaintext_port = node.url().replace("amqp://", "amqps://");
    let (not_tls, message) = failure(
        connect(&plaintext_port, TlsOptions::new().ca_file(&ca_file)).await,
        "plaintext port",
    );
    assert_eq!(not_tls, ConnectFailure::NotTls);
    assert!(message.contains("does not speak TLS"), "{message}");
    let listed = node
        .ctl(&["list_connections", "ssl", "--quiet", "--no-table-headers"])
        .await;
    assert!(
        listed.trim().is_empty(),
        "a refused connection is still open: {listed}"
    );

    // A list of nodes: the TLS settings apply to each, and a node that
    // does not speak TLS is passed over for the next, which is TLS.
    let list = format!("{plaintext_port};{}", node.tls_url("localhost"));
    let app = connect(&list, TlsOptions::new().ca_file(&ca_file))
        .await
        .expect("the second node of the list connects over TLS");
    assert!(
        single_connection_is_tls(&node).await,
        "the node list's connection is not TLS"
    );
    app.close().await.expect("closed");
    // With a plaintext node in it, TLS settings are refused, not ignored.
    let mixed = format!("{};{}", node.url(), node.tls_url("localhost"));
    match connect(&mixed, TlsOptions::new().ca_file(&ca_file)).await {
        Err(Error::Broker(BrokerError::InvalidUrl { url, reason })) => {
            assert!(!url.contains(":guest@"), "the password shows: {url}");
            println!("[tls] mixed list: {reason}");
        }
        Err(other) => panic!("mixed list: expected InvalidUrl, got {other:?}"),
        Ok(_) => panic!("mixed list: connected with a plaintext node in the list"),
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_broker_that_requires_a_client_certificate_accepts_one_signed_by_its_ca() {
    common::init_logs();
    let ca = Ca::new("task-core test CA");
    let (cert_pem, key_pem) = ca.issue(
        "localhost",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let node = PrivateBroker::start_with_tls(
        "tls-client",
        NodeTls {
            ca_pem: ca.pem(),
            cert_pem,
            key_pem,
            require_client_cert: true,
        },
    )
    .await;
    let files = Files::new("client");
    let ca_file = files.write("ca.pem", &ca.pem());
    let (client_pem, client_key) =
        ca.issue("task-worker", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let client_cert = files.write("client.pem", &client_pem);
    let client_key = files.write("client.key", &client_key);

    // Without a certificate: refused, and the error says a certificate is needed.
    let (required, message) = failure(
        connect(
            &node.tls_url("localhost"),
            TlsOptions::new().ca_file(&ca_file),
        )
        .await,
        "no client certificate",
    );
    // TLS 1.3: the node checks the client's certificate after the client's
    // side of the handshake is done, so its refusal arrives as an alert or,
    // when the client has written meanwhile, as a reset that loses it.
    assert!(
        matches!(
            required,
            ConnectFailure::Tls(TlsFailure::ClientCertificateRequired) | ConnectFailure::Closed
        ) && message.contains("client certificate"),
        "{required:?}: {message}"
    );

    // With a certificate the node's CA signed: connected over TLS.
    let app = connect(
        &node.tls_url("localhost"),
        TlsOptions::new()
            .ca_file(&ca_file)
            .client_cert(&client_cert, &client_key),
    )
    .await
    .expect("a client certificate signed by the node's CA connects");
    assert!(
        single_connection_is_tls(&node).await,
        "the broker does not report the connection as ssl"
    );
    let subject = node
        .ctl(&[
            "list_connections",
            "peer_cert_subject",
            "--quiet",
            "--no-table-headers",
        ])
        .await;
    assert!(
        subject.contains("task-worker"),
        "peer certificate: {subject}"
    );
    app.close().await.expect("closed");

    // A certificate from a CA the node does not trust: refused.
    let (stranger_pem, stranger_key) =
        Ca::new("untrusted CA").issue("intruder", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger_cert = files.write("stranger.pem", &stranger_pem);
    let stranger_key = files.write("stranger.key", &stranger_key);
    let (refused, message) = failure(
        connect(
            &node.tls_url("localhost"),
            TlsOptions::new()
                .ca_file(&ca_file)
                .client_cert(&stranger_cert, &stranger_key),
        )
        .await,
        "untrusted client certificate",
    );
    assert!(
        matches!(
            refused,
            ConnectFailure::Tls(TlsFailure::ClientCertificateRefused) | ConnectFailure::Closed
        ) && message.contains("client certificate"),
        "{refused:?}: {message}"
    );
    node.shutdown().await;
}

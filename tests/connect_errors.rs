//! A connection that cannot be opened fails at once with a typed
//! [`BrokerError::Connect`] whose message says what failed, where (no
//! password) and what to check.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use task_core::broker::{BrokerError, ConnectFailure};
use task_core::{App, Error};

async fn connect(url: &str) -> (ConnectFailure, String, String) {
    match App::builder()
        .broker_url(url)
        .set_as_default(false)
        .connect()
        .await
    {
        Err(Error::Broker(error @ BrokerError::Connect { .. })) => {
            let message = error.to_string();
            let BrokerError::Connect { failure, url, .. } = error else {
                unreachable!()
            };
            (failure, url, message)
        }
        Err(other) => panic!("expected BrokerError::Connect, got {other:?}"),
        Ok(_) => panic!("connected to {url}"),
    }
}

#[tokio::test]
async fn a_wrong_password_is_an_authentication_failure_naming_the_url_without_the_password() {
    let good: lapin::uri::AMQPUri = common::broker_url().parse().expect("the test broker URL");
    let host = &good.authority.host;
    let port = good.authority.port;
    let user = &good.authority.userinfo.username;
    let url = format!("amqp://{user}:not-the-password@{host}:{port}/%2f");
    let (failure, shown_url, message) = connect(&url).await;
    assert_eq!(failure, ConnectFailure::AuthenticationFailed);
    assert_eq!(shown_url, format!("amqp://{user}@{host}:{port}/%2f"));
    assert_eq!(
        message,
        format!(
            "authentication refused by amqp://{user}@{host}:{port}/%2f: \
             check the user name and password"
        )
    );
    assert!(!message.contains("not-the-password"), "{message}");
}

#[tokio::test]
async fn a_closed_port_is_refused_with_a_hint() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let (failure, _, message) = connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await;
    assert_eq!(failure, ConnectFailure::Refused);
    assert_eq!(
        message,
        format!(
            "nothing is listening at 127.0.0.1:{port} (connection refused): \
             is RabbitMQ running, is the port right?"
        )
    );
}

#[tokio::test]
async fn a_peer_that_does_not_speak_amqp_is_named_as_such() {
    // A service of another protocol: it reads the AMQP header and answers
    // in its own terms, as an HTTP server or Redis would.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let peer = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("the client connects");
        let mut header = [0u8; 8];
        socket
            .read_exact(&mut header)
            .expect("the client sends its header");
        socket
            .write_all(b"-ERR unknown command 'AMQP'\r\n")
            .expect("answer");
        header
    });
    let (failure, _, message) = connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await;
    assert_eq!(&peer.join().expect("the peer thread")[..4], b"AMQP");
    assert_eq!(failure, ConnectFailure::NotAmqp);
    assert_eq!(
        message,
        format!(
            "the peer at 127.0.0.1:{port} does not speak AMQP 0-9-1: \
             is this the broker's port (5672, 5671 for amqps)?"
        )
    );
}

#[tokio::test]
async fn a_missing_vhost_is_named_with_the_brokers_reason() {
    let good: lapin::uri::AMQPUri = common::broker_url().parse().expect("the test broker URL");
    let vhost = format!("no-such-vhost-{}", uuid::Uuid::new_v4().simple());
    let url = format!(
        "amqp://{}:{}@{}:{}/{vhost}",
        good.authority.userinfo.username,
        good.authority.userinfo.password,
        good.authority.host,
        good.authority.port
    );
    let (failure, _, message) = connect(&url).await;
    assert!(
        matches!(&failure, ConnectFailure::VhostRefused(reason) if reason.contains(&vhost)),
        "{failure:?}"
    );
    assert!(message.contains("refused the virtual host"), "{message}");
}

/// A peer that accepts the connection and then says nothing (a black-holed
/// port, a stuck proxy): the attempt fails after `CONNECT_TIMEOUT` with a
/// typed timeout instead of holding the caller forever.
#[tokio::test]
async fn a_peer_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (socket, _) = listener.accept().expect("the client connects");
        // Holds the socket open, silent, until the client has given up.
        let _ = released.recv();
        drop(socket);
    });
    let (failure, _, message) = connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await;
    release.send(()).expect("the peer waits");
    peer.join().expect("the peer thread");
    assert_eq!(failure, ConnectFailure::TimedOut);
    assert!(
        message.starts_with(&format!("no answer from 127.0.0.1:{port} within 20 s")),
        "{message}"
    );
}

/// A user of the test's own on the shared broker, removed on drop.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    fn add(password: &str) -> Self {
        let name = format!("test-creds-{}", uuid::Uuid::new_v4().simple());
        let ctl = |args: &[&str]| {
            let status = std::process::Command::new("rabbitmqctl")
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("rabbitmqctl runs");
            assert!(status.success(), "rabbitmqctl {args:?}");
        };
        ctl(&["add_user", &name, password]);
        ctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        Self { name }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn credentials_from_a_password_file_log_in_where_the_url_names_no_user() {
    use task_core::broker::Credentials;
    // A password URL syntax would have to escape (`@ : / ; %`).
    let password = "p@ss:w/rd;100%";
    let user = BrokerUser::add(password);
    let good: lapin::uri::AMQPUri = common::broker_url().parse().expect("the test broker URL");
    let (host, port) = (&good.authority.host, good.authority.port);
    let url = format!("amqp://{host}:{port}/%2f");
    let file = std::env::temp_dir().join(format!("{}.password", user.name));
    std::fs::write(&file, format!("{password}\n")).expect("a temp file");

    let credentials = Credentials::password_file(&user.name, &file).expect("the file reads");
    assert!(
        !format!("{credentials:?}").contains(password),
        "Debug shows the password"
    );
    let app = App::builder()
        .broker_url(&url)
        .credentials(credentials)
        .set_as_default(false)
        .connect()
        .await
        .expect("the file's password logs in");
    app.close().await.expect("closed");

    // The same user with another password: refused, and nothing shows it.
    let wrong = Credentials::new(&user.name, "not-it");
    match App::builder()
        .broker_url(&url)
        .credentials(wrong)
        .set_as_default(false)
        .connect()
        .await
    {
        Err(Error::Broker(error @ BrokerError::Connect { .. })) => {
            let message = error.to_string();
            assert!(!message.contains("not-it"), "{message}");
            let BrokerError::Connect { failure, .. } = error else {
                unreachable!()
            };
            assert_eq!(failure, ConnectFailure::AuthenticationFailed);
        }
        Err(other) => panic!("expected BrokerError::Connect, got {other:?}"),
        Ok(_) => panic!("a wrong password logged in"),
    }
    // A URL's own user wins over the credentials.
    let app = App::builder()
        .broker_url(common::broker_url())
        .credentials(Credentials::new(&user.name, "not-it"))
        .set_as_default(false)
        .connect()
        .await
        .expect("the URL's own user and password log in");
    app.close().await.expect("closed");
    let _ = std::fs::remove_file(&file);
}

//! The private Redis server of the fault tests (`common/private_redis.rs`):
//! what it acknowledged survives a stop, a kill and a restart; a killed
//! server answers nothing; nothing is left behind.

#[path = "common/private_redis.rs"]
mod private_redis;

use private_redis::{PrivateRedis, Resp};

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

fn get(redis: &PrivateRedis, key: &str) -> Option<String> {
    redis
        .command(&["GET", key])
        .expect("the server answers")
        .text()
}

#[tokio::test]
async fn data_survives_a_stop_and_a_kill_and_nothing_is_left_behind() {
    let mut redis = PrivateRedis::start().await;
    let (port, dir) = (redis.port(), redis.dir().to_owned());
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    assert_eq!(
        redis.command(&["PING"]).unwrap(),
        Resp::Simple("PONG".into())
    );
    assert_eq!(redis.command(&["SET", "stopped", "ü 1"]).unwrap(), ok());

    redis.stop().await;
    assert!(!redis.is_running());
    assert!(
        redis.command(&["PING"]).is_err(),
        "a stopped server answers"
    );
    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert_eq!(get(&redis, "stopped").as_deref(), Some("ü 1"));

    // Acknowledged means fsynced: a kill right after the reply loses nothing.
    assert_eq!(redis.command(&["SET", "killed", "2"]).unwrap(), ok());
    redis.kill().await;
    assert!(!redis.is_running());
    assert!(redis.command(&["PING"]).is_err(), "a killed server answers");
    redis.restart().await;
    assert!(redis.is_running());
    assert_eq!(get(&redis, "killed").as_deref(), Some("2"));
    assert_eq!(get(&redis, "stopped").as_deref(), Some("ü 1"));
    assert_eq!(get(&redis, "missing"), None);
    assert!(matches!(
        redis.command(&["NO-SUCH-COMMAND"]).unwrap(),
        Resp::Error(_)
    ));

    // A restart of a running server stops it first.
    redis.restart().await;
    assert_eq!(get(&redis, "killed").as_deref(), Some("2"));

    drop(redis);
    assert!(
        private_redis::command(port, &["PING"]).is_err(),
        "the server outlived its drop"
    );
    assert!(!dir.exists(), "{} outlived the drop", dir.display());
}

#[tokio::test]
async fn a_frozen_server_answers_once_thawed() {
    let redis = PrivateRedis::start().await;
    redis.freeze();
    let port = redis.port();
    let blocked = std::thread::spawn(move || private_redis::command(port, &["PING"]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!blocked.is_finished(), "a frozen server answered");
    redis.thaw();
    assert_eq!(
        blocked.join().unwrap().unwrap(),
        Resp::Simple("PONG".into())
    );
}

//! Test keys on the shared Redis, for the test binaries of the root package
//! (which depend on `redis`; `common` is shared with `task-worker`'s tests,
//! which do not). Include with `#[path = "common/redis_keys.rs"] mod redis_keys;`.

/// Deletes every key under `prefix` on the shared Redis (a test's own
/// key prefix).
pub async fn delete_redis_keys(prefix: &str) {
    let client = redis::Client::open(super::common::redis_url()).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .expect("keys listed");
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut connection)
            .await
            .expect("keys deleted");
    }
}

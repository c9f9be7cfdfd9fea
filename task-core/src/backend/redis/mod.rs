//! [`RedisBackend`]: results in Redis, laid out as Celery's Redis backend
//! lays them out, so Python and Rust processes read each other's results.
//!
//! - Each state of a task is stored under `celery-task-meta-<task id>` as
//!   Celery's JSON meta, with the backend's expiry (`result_expires`, one
//!   day by default), and published on a pub/sub channel of the same name.
//!   Storing and publishing is one Lua script that, as Celery does, never
//!   overwrites a SUCCESS (a task run twice after a lost ack does not turn
//!   a success into a later state).
//! - Waiting is by pub/sub, never by polling: one RESP3 connection
//!   (the `redis` crate's `ConnectionManager`, which reconnects and
//!   subscribes again by itself) carries the commands and every
//!   subscription of the process; each published state goes straight to
//!   the table the waiting handles read. After a lost
//!   connection, every awaited key is read again once the connection is
//!   back, so a state published while it was down is not missed.
//! - Groups are saved under `celery-taskset-meta-<group id>` as Celery's
//!   `GroupResult.save` writes them.
//! - Chords join as Celery's Redis backend joins them, so header parts run
//!   by Python and Rust workers count together: each part's result goes into
//!   the sorted set `<group key>.j` (score: its index; deduplicated by
//!   `<task id>:<index>` in the set `.d`), the size is `.s` (written by the
//!   client that sent the chord) plus `.t`, and the part that completes the
//!   count takes the claim `.c` (`SET NX`) and publishes the body; then the
//!   keys go and `.c` becomes `done`, so late copies of parts are ignored.

mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo};
use serde::Deserialize;

use serde_json::value::RawValue;

use self::subscriptions::Subscriptions;
use super::meta::celery_meta;
use super::{
    BackendError, ChordClaim, ChordEnd, ChordJoin, ChordPart, ChordPartResult, ResultBackend,
    ResultMeta, ResultRecord, ResultWatch,
};
use crate::broker::redact;
use crate::TaskState;

/// Celery's key prefix for task results.
pub const TASK_KEY_PREFIX: &str = "celery-task-meta-";
/// Celery's key prefix for saved groups (and chord counters).
pub const GROUP_KEY_PREFIX: &str = "celery-taskset-meta-";

/// The key a task's result is stored under (and the channel its states are
/// published on).
pub fn task_key(task_id: &str) -> String {
    format!("{TASK_KEY_PREFIX}{task_id}")
}

/// The key a saved group is stored under.
pub fn group_key(group_id: &str) -> String {
    format!("{GROUP_KEY_PREFIX}{group_id}")
}

/// Stores a state unless SUCCESS is stored already, with the expiry given
/// (0: none), and publishes it on the key's channel. Returns 1 when stored,
/// 0 when an earlier SUCCESS was kept.
const STORE_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

/// Adds one chord part (unless counted already), and takes the claim to
/// publish the body when the count is complete.
/// KEYS: `.j` (parts, by index), `.t` (extra count), `.s` (size), `.d`
/// (counted parts), `.c` (claim).
/// ARGV: the part's dedup member, its JSON, its index (score), the expiry
/// (0: none), the claim's expiry, the claim token.
/// Returns `{parts counted, claimed}`, or `{-1, 0}` for a finished chord.
const CHORD_PART_SCRIPT: &str = r#"
if redis.call('GET', KEYS[5]) == 'done' then
  return {-1, 0}
end
if redis.call('SADD', KEYS[4], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
end
local counted = redis.call('ZCARD', KEYS[1])
local expires = tonumber(ARGV[4])
if expires > 0 then
  for i = 1, 4 do
    redis.call('EXPIRE', KEYS[i], expires)
  end
end
local size = redis.call('GET', KEYS[3])
if not size then
  return {counted, 0}
end
local total = tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0')
if counted == total and redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', ARGV[5]) then
  return {counted, 1}
end
return {counted, 0}
"#;

/// Ends a chord whose body was published, if the claim is still ours:
/// deletes its parts and size and marks it `done` (for ARGV[2] seconds).
/// KEYS: `.c`, `.j`, `.t`, `.s`, `.d`. ARGV: the claim token, the expiry.
const CHORD_FINISH_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
return 1
"#;

/// Gives back the claim to publish a chord's body, if it is still ours.
/// KEYS: `.c`. ARGV: the claim token.
const CHORD_RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// How long the claim to publish a chord's body holds (it is released when
/// the body is out; the expiry covers a worker that died in between).
const CHORD_CLAIM_EXPIRES_SECS: u64 = 60;
/// How long a finished chord stays marked `done`.
const CHORD_DONE_EXPIRES_SECS: u64 = 300;

/// How a [`RedisBackend`] stores results.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// How long results are kept (Celery's `result_expires`; default one
    /// day; `None` keeps them until forgotten).
    pub expires: Option<Duration>,
    /// Whether the task's name, arguments, worker, retries and queue are
    /// stored with its result (Celery's `result_extended`; default no).
    pub extended: bool,
    /// How long one command may take before it fails (default 10 s), so a
    /// Redis that hangs is an error, not a hang.
    pub response_timeout: Duration,
    /// TLS settings for a `rediss://` URL: a CA file (then only that CA is
    /// trusted, not the system's roots) and a client certificate (default:
    /// the system's roots). Given with a `redis://` URL, `connect` refuses
    /// rather than ignore it.
    pub tls: Option<crate::broker::TlsOptions>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            expires: Some(super::DEFAULT_RESULT_EXPIRES),
            extended: false,
            response_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Results in Redis, wire-compatible with Celery's Redis backend; see the
/// module docs. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared with the subscriptions' control task, which holds it weakly.
    connection: Arc<ConnectionManager>,
    url: String,
    options: RedisOptions,
    /// The results this process awaits, fed by the subscriptions.
    subscriptions: Subscriptions,
    store: redis::Script,
    chord_part: redis::Script,
    chord_finish: redis::Script,
    chord_release: redis::Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.url)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the Redis at `url` (`redis://[:password@]host:port/db`,
    /// `rediss://` for TLS). A server that cannot be reached fails at once
    /// with [`BackendError::Connect`]; later losses are reconnected.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, BackendError> {
        let redacted = redact(url);
        let invalid = |reason: String| BackendError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let info = url
            .into_connection_info()
            .map_err(|e| invalid(e.to_string()))?;
        // Push messages (pub/sub on the command connection) need RESP3.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let tls_url = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let client = match &options.tls {
            None => redis::Client::open(info),
            Some(_) if !tls_url => {
                return Err(invalid(
                    "TLS settings were given for a plaintext redis:// URL (use rediss://)".into(),
                ))
            }
            Some(tls) => {
                let pem = tls.pem().map_err(|e| BackendError::Connect {
                    url: redacted.clone(),
                    source: Box::new(e),
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: pem.client.map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: pem.ca,
                };
                redis::Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| invalid(e.to_string()))?;

        let (subscriptions, push, control) = Subscriptions::new();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |info: PushInfo| push.handle(info))
            .set_automatic_resubscription()
            .set_connection_timeout(Some(options.response_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(4)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| BackendError::Connect {
                url: redacted.clone(),
                source: Box::new(e),
            })?;
        let connection = Arc::new(connection);
        control.start(&connection, &subscriptions);
        let inner = Arc::new(Inner {
            connection,
            url: redacted,
            options,
            subscriptions,
            store: redis::Script::new(STORE_SCRIPT),
            chord_part: redis::Script::new(CHORD_PART_SCRIPT),
            chord_finish: redis::Script::new(CHORD_FINISH_SCRIPT),
            chord_release: redis::Script::new(CHORD_RELEASE_SCRIPT),
        });
        Ok(Self { inner })
    }

    fn connection(&self) -> ConnectionManager {
        (*self.inner.connection).clone()
    }
}

#[async_trait::async_trait]
impl ResultBackend for RedisBackend {
    async fn store(&self, record: &ResultRecord<'_>) -> Result<(), BackendError> {
        let key = task_key(record.task_id);
        let meta = celery_meta(record, self.inner.options.extended).ok_or_else(|| {
            BackendError::Corrupt {
                key: key.clone(),
                reason: "the result to store is not a JSON object".into(),
            }
        })?;
        let expires = self
            .inner
            .options
            .expires
            .map_or(0, |expires| expires.as_secs().max(1));
        let _stored: i64 = self
            .inner
            .store
            .key(&key)
            .arg(meta)
            .arg(expires)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| BackendError::operation("store", e))?;
        Ok(())
    }

    async fn meta(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let key = task_key(task_id);
        let stored: Option<Vec<u8>> = self
            .connection()
            .get(&key)
            .await
            .map_err(|e| BackendError::operation("get", e))?;
        stored
            .map(|bytes| ResultMeta::decode(&key, &bytes))
            .transpose()
    }

    async fn watch(&self, task_id: &str, read_stored: bool) -> Result<ResultWatch, BackendError> {
        let waiter = self.inner.subscriptions.watch(task_id).await?;
        if read_stored {
            if let Some(meta) = self.meta(task_id).await? {
                self.inner
                    .subscriptions
                    .deliver(&task_key(task_id), meta.into_body());
            }
        }
        Ok(ResultWatch { waiter })
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let _deleted: i64 = self
            .connection()
            .del(task_key(task_id))
            .await
            .map_err(|e| BackendError::operation("forget", e))?;
        Ok(())
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String]) -> Result<(), BackendError> {
        // Celery's `{"result": GroupResult.as_tuple()}`:
        // `[[gid, parent], [[[id, parent], children], ...]]`.
        let members: Vec<_> = task_ids
            .iter()
            .map(|id| ((id.as_str(), None::<()>), None::<()>))
            .collect();
        let meta = serde_json::json!({ "result": ((group_id, None::<()>), members) });
        let meta =
            serde_json::to_vec(&meta).map_err(|e| BackendError::operation("save_group", e))?;
        let mut connection = self.connection();
        let saved: redis::RedisResult<()> = match self.inner.options.expires {
            Some(expires) => {
                connection
                    .set_ex(group_key(group_id), meta, expires.as_secs().max(1))
                    .await
            }
            None => connection.set(group_key(group_id), meta).await,
        };
        saved.map_err(|e| BackendError::operation("save_group", e))
    }

    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let key = group_key(group_id);
        let stored: Option<Vec<u8>> = self
            .connection()
            .get(&key)
            .await
            .map_err(|e| BackendError::operation("restore_group", e))?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        decode_group(&bytes)
            .map(Some)
            .map_err(|reason| BackendError::Corrupt { key, reason })
    }

    async fn forget_group(&self, group_id: &str) -> Result<(), BackendError> {
        let _deleted: i64 = self
            .connection()
            .del(group_key(group_id))
            .await
            .map_err(|e| BackendError::operation("forget_group", e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.url.clone()
    }

    fn awaited(&self) -> usize {
        self.inner.subscriptions.len()
    }

    fn joins_chords(&self) -> bool {
        true
    }

    async fn set_chord_size(&self, group_id: &str, size: usize) -> Result<(), BackendError> {
        let keys = ChordKeys::of(group_id);
        let mut pipe = redis::pipe();
        pipe.del(&keys.claim).ignore();
        match self.inner.options.expires {
            Some(expires) => pipe.set_ex(&keys.size, size, expires.as_secs().max(1)),
            None => pipe.set(&keys.size, size),
        }
        .ignore();
        pipe.query_async::<()>(&mut self.connection())
            .await
            .map_err(|e| BackendError::operation("set_chord_size", e))
    }

    async fn join_chord_part(&self, part: &ChordPart<'_>) -> Result<ChordJoin, BackendError> {
        let keys = ChordKeys::of(part.group_id);
        let index = part
            .group_index
            .map_or_else(|| "+inf".to_owned(), |index| index.to_string());
        let member = serde_json::to_vec(&(1, part.task_id, part.state, part.result))
            .map_err(|e| BackendError::operation("join_chord", e))?;
        let expires = self.inner.options.expires.map_or(0, |e| e.as_secs().max(1));
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (counted, claimed): (i64, i64) = self
            .inner
            .chord_part
            .key(&keys.parts)
            .key(&keys.extra)
            .key(&keys.size)
            .key(&keys.counted)
            .key(&keys.claim)
            .arg(format!("{}:{index}", part.task_id))
            .arg(member)
            .arg(&index)
            .arg(expires)
            .arg(CHORD_CLAIM_EXPIRES_SECS)
            .arg(&token)
            .invoke_async(&mut self.connection())
            .await
            .map_err(|e| BackendError::operation("join_chord", e))?;
        if counted < 0 {
            return Ok(ChordJoin::Finished);
        }
        if claimed == 0 {
            return Ok(ChordJoin::Pending);
        }
        let stored: Vec<Vec<u8>> = self
            .connection()
            .zrange(&keys.parts, 0, -1)
            .await
            .map_err(|e| BackendError::operation("join_chord", e))?;
        let parts = stored
            .iter()
            .map(|bytes| {
                let (_, task_id, state, result): (u8, String, TaskState, Box<RawValue>) =
                    serde_json::from_slice(bytes).map_err(|e| BackendError::Corrupt {
                        key: keys.parts.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(ChordPartResult {
                    task_id,
                    state,
                    result,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(ChordJoin::Complete(ChordClaim {
            group_id: part.group_id.to_owned(),
            token,
            parts,
        }))
    }

    async fn finish_chord(&self, claim: &ChordClaim, end: ChordEnd) -> Result<(), BackendError> {
        let keys = ChordKeys::of(&claim.group_id);
        let finished: redis::RedisResult<i64> = match end {
            ChordEnd::Failed => self.connection().del(&keys.size).await,
            ChordEnd::NotSent => {
                self.inner
                    .chord_release
                    .key(&keys.claim)
                    .arg(&claim.token)
                    .invoke_async(&mut self.connection())
                    .await
            }
            ChordEnd::BodySent => {
                self.inner
                    .chord_finish
                    .key(&keys.claim)
                    .key(&keys.parts)
                    .key(&keys.extra)
                    .key(&keys.size)
                    .key(&keys.counted)
                    .arg(&claim.token)
                    .arg(CHORD_DONE_EXPIRES_SECS)
                    .invoke_async(&mut self.connection())
                    .await
            }
        };
        finished
            .map(drop)
            .map_err(|e| BackendError::operation("finish_chord", e))
    }
}

/// The keys of one chord's join (Celery's suffixes of the group key).
struct ChordKeys {
    parts: String,
    extra: String,
    size: String,
    counted: String,
    claim: String,
}

impl ChordKeys {
    fn of(group_id: &str) -> Self {
        let key = group_key(group_id);
        Self {
            parts: format!("{key}.j"),
            extra: format!("{key}.t"),
            size: format!("{key}.s"),
            counted: format!("{key}.d"),
            claim: format!("{key}.c"),
        }
    }
}

/// Reads a saved group's member ids: Celery 5's `{"result": [[gid,
/// parent], [[[id, parent], children], ...]]}`, or the member list alone
/// (`{"result": [[[id, parent], children], ...]}`, older Celery); a bare
/// `[id, parent]` member is read too.
fn decode_group(bytes: &[u8]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Saved {
        result: Vec<serde_json::Value>,
    }
    let saved: Saved = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let whole_tuple = saved.result.len() == 2
        && saved.result[0]
            .as_array()
            .and_then(|head| head.first())
            .is_some_and(serde_json::Value::is_string)
        && saved.result[1].is_array();
    let members = if whole_tuple {
        saved.result[1].as_array().map(Vec::as_slice).unwrap_or(&[])
    } else {
        saved.result.as_slice()
    };
    members
        .iter()
        .map(|member| {
            let mut node = member;
            // Descend `[[id, parent], children]` / `[id, parent]` to the id.
            while let Some(first) = node.as_array().and_then(|items| items.first()) {
                node = first;
            }
            node.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("a group member is not a result tuple: {member}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_groups_are_read_as_celery_writes_them() {
        let celery = br#"{"result": [["g", null], [[["a", null], null], [["b", null], null]]]}"#;
        assert_eq!(decode_group(celery).unwrap(), vec!["a", "b"]);
        let members_only = br#"{"result": [[["a", null], null], [["b", null], null]]}"#;
        assert_eq!(decode_group(members_only).unwrap(), vec!["a", "b"]);
        let empty = br#"{"result": [["g", null], []]}"#;
        assert!(decode_group(empty).unwrap().is_empty());
        let bare = br#"{"result": [["c", null]]}"#;
        assert_eq!(decode_group(bare).unwrap(), vec!["c"]);
        assert!(decode_group(br#"{"result": [[1, null]]}"#).is_err());
        assert!(decode_group(b"garbage").is_err());
    }
}

//! [`RecoveryStore`] on Redis: each method is the command (or script, or
//! pipeline) recovery sent before the seam existed; keys, scripts and
//! record encodings come from [`crate::redis_model`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Value;

use super::store::{
    Adopted, ClientList, InboxEntry, NodeCleanup, RecoveryStore, SessionRecord, StoreResult,
    UnreadPage, UnreadStream,
};
use crate::cluster::{liveness, routes, Cluster};
use crate::redis_model::inbox::{send_drain, FIELD_MESSAGES};
use crate::redis_model::scripts::{evalsha, query_cmd};
use crate::redis_model::value::{self as rv, StreamEntry};
use crate::redis_model::{keys, wire};
use crate::subscription::Subscription;

/// Recovery's Redis, through the cluster's shared connection.
pub struct RedisRecoveryStore {
    /// Gives the connection, the scripts and this node's heartbeat.
    cluster: Arc<Cluster>,
}

impl RedisRecoveryStore {
    /// A store on `cluster`'s Redis.
    pub fn new(cluster: Arc<Cluster>) -> RedisRecoveryStore {
        RedisRecoveryStore { cluster }
    }

    fn con(&self) -> ConnectionManager {
        self.cluster.connection()
    }

    /// Runs a command whose reply is not needed.
    async fn run(&self, cmd: &redis::Cmd) -> StoreResult<()> {
        cmd.query_async::<Value>(&mut self.con()).await?;
        Ok(())
    }

    /// Runs a script, loading the scripts first if Redis forgot them.
    async fn script(&self, cmd: &redis::Cmd) -> StoreResult<i64> {
        Ok(query_cmd(&self.cluster.scripts, &mut self.con(), cmd).await?)
    }

    async fn session_record(&self, client_id: String) -> StoreResult<SessionRecord> {
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(keys::session(&client_id))
            .arg("owner")
            .arg("persistent")
            .arg("connected")
            .arg("will")
            .query_async(&mut self.con())
            .await?;
        let field = |i: usize| fields.get(i).cloned().flatten();
        Ok(SessionRecord {
            client_id: client_id.into(),
            owner: field(0).map(|o| String::from_utf8_lossy(&o).into_owned()),
            persistent: field(1).as_deref() == Some(b"1"),
            connected: field(2).as_deref() == Some(b"1"),
            will: field(3)
                .filter(|w| !w.is_empty())
                .and_then(|w| wire::decode_message(w.into()).ok()),
        })
    }
}

#[async_trait]
impl RecoveryStore for RedisRecoveryStore {
    async fn try_lock(&self, node: &str, token: &str, ttl: Duration) -> StoreResult<bool> {
        let locked: Value = redis::cmd("SET")
            .arg(keys::recovery_lock(node))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.con())
            .await?;
        Ok(matches!(locked, Value::Okay))
    }

    async fn renew_lock(&self, node: &str, token: &str, ttl: Duration) -> StoreResult<bool> {
        let key = keys::recovery_lock(node);
        let mut cmd = evalsha(&self.cluster.scripts.lock_renew, &[&key]);
        cmd.arg(token).arg(ttl.as_millis() as u64);
        Ok(self.script(&cmd).await? == 1)
    }

    async fn release_lock(&self, node: &str, token: &str) -> StoreResult<()> {
        let key = keys::recovery_lock(node);
        let mut cmd = evalsha(&self.cluster.scripts.lock_release, &[&key]);
        cmd.arg(token);
        self.script(&cmd).await.map(|_| ())
    }

    async fn is_alive(&self, node: &str) -> StoreResult<bool> {
        Ok(redis::cmd("EXISTS")
            .arg(keys::node_alive(node))
            .query_async(&mut self.con())
            .await?)
    }

    async fn heartbeat(&self) -> StoreResult<()> {
        liveness::heartbeat(&mut self.con(), &self.cluster).await?;
        Ok(())
    }

    async fn unregister(&self, node: &str) -> StoreResult<()> {
        self.run(redis::cmd("SREM").arg(keys::nodes()).arg(node))
            .await
    }

    async fn fence(&self, node: &str, by: &str) -> StoreResult<()> {
        self.run(redis::cmd("SET").arg(keys::node_fenced(node)).arg(by))
            .await
    }

    async fn lift_fence(&self, node: &str) -> StoreResult<()> {
        self.run(redis::cmd("DEL").arg(keys::node_fenced(node)))
            .await
    }

    async fn sessions_of(&self, node: &str) -> StoreResult<Vec<SessionRecord>> {
        let client_ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::node_clients(node))
            .query_async(&mut self.con())
            .await?;
        let mut out = Vec::with_capacity(client_ids.len());
        for client_id in client_ids {
            out.push(self.session_record(client_id).await?);
        }
        Ok(out)
    }

    async fn subscriptions(&self, client_id: &str) -> StoreResult<Vec<(String, Subscription)>> {
        let subs: Value = redis::cmd("HGETALL")
            .arg(keys::subscriptions(client_id))
            .query_async(&mut self.con())
            .await?;
        let flat = rv::bulk_list(Some(&subs))?;
        Ok(rv::subscriptions(&flat))
    }

    async fn adopt(&self, client_id: &str, from: &str, to: &str) -> StoreResult<Option<Adopted>> {
        let session_keys = keys::session_keys(client_id);
        let key_refs: Vec<&str> = session_keys.iter().map(String::as_str).collect();
        let mut take = evalsha(&self.cluster.scripts.adopt, &key_refs);
        take.arg(from).arg(to);
        let reply: Value = query_cmd(&self.cluster.scripts, &mut self.con(), &take).await?;
        // 0: not the dead node's any more; else {epoch, ms left or -1}.
        let Value::Array(parts) = reply else {
            return Ok(None);
        };
        let epoch = parts.first().and_then(rv::int).unwrap_or(0) as u64;
        let left = parts.get(1).and_then(rv::int).unwrap_or(-1);
        let adopted = Adopted {
            epoch,
            expires_in: u64::try_from(left).ok().map(Duration::from_millis),
        };
        self.run(
            redis::cmd("SADD")
                .arg(keys::node_clients(to))
                .arg(client_id),
        )
        .await?;
        Ok(Some(adopted))
    }

    async fn delete_session(&self, client_id: &str) -> StoreResult<()> {
        self.run(
            redis::cmd("DEL")
                .arg(keys::session(client_id))
                .arg(keys::subscriptions(client_id))
                .arg(keys::inflight(client_id))
                .arg(keys::incoming_qos2(client_id))
                .arg(keys::queue(client_id)),
        )
        .await
    }

    async fn connected_owner(&self, client_id: &str) -> StoreResult<Option<String>> {
        let (owner, connected): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::session(client_id))
            .arg("owner")
            .arg("connected")
            .query_async(&mut self.con())
            .await?;
        Ok(owner.filter(|_| connected.as_deref() == Some("1")))
    }

    async fn send_drain(&self, owner: &str, client_id: &str) -> StoreResult<()> {
        Ok(send_drain(&mut self.con(), owner, client_id).await?)
    }

    async fn sync_routes(&self, node: &str, filters: &[String]) -> StoreResult<()> {
        Ok(routes::sync_own(&mut self.con(), node, filters).await?)
    }

    async fn drop_routes(&self, node: &str) -> StoreResult<()> {
        self.run(redis::cmd("DEL").arg(keys::node_routes(node)))
            .await?;
        Ok(routes::publish_drop(&mut self.con(), node).await?)
    }

    async fn bus_cursor(&self, node: &str) -> StoreResult<Option<String>> {
        Ok(redis::cmd("GET")
            .arg(keys::bus_cursor(node))
            .query_async(&mut self.con())
            .await?)
    }

    async fn read_entries(&self, page: &UnreadPage) -> StoreResult<Vec<InboxEntry>> {
        let key = match &page.stream {
            UnreadStream::Inbox(node) => keys::inbox(node),
            UnreadStream::Journal(node) => keys::journal(node),
            UnreadStream::Broadcast => keys::bus(),
        };
        let reply: Value = redis::cmd("XRANGE")
            .arg(key)
            .arg(&page.from)
            .arg("+")
            .arg("COUNT")
            .arg(page.count)
            .query_async(&mut self.con())
            .await?;
        Ok(rv::stream_entries(&reply)?
            .into_iter()
            .map(decode_entry)
            .collect())
    }

    async fn forget_node(&self, node: &str, cleanup: NodeCleanup) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        match cleanup.clients {
            ClientList::Delete => {
                pipe.cmd("DEL").arg(keys::node_clients(node)).ignore();
            }
            ClientList::Remove(ids) if ids.is_empty() => {}
            ClientList::Remove(ids) => {
                let ids = ids.iter().map(|id| &**id);
                pipe.cmd("SREM")
                    .arg(keys::node_clients(node))
                    .arg(ids.collect::<Vec<_>>())
                    .ignore();
            }
        }
        pipe.cmd("DEL").arg(keys::bus_cursor(node)).ignore();
        let trims = [
            (keys::inbox(node), cleanup.keep_inbox_from),
            (keys::journal(node), cleanup.keep_journal_from),
        ];
        for (stream, keep_from) in trims {
            if let Some(keep_from) = keep_from {
                pipe.cmd("XTRIM")
                    .arg(stream)
                    .arg("MINID")
                    .arg(keep_from)
                    .ignore();
            }
        }
        pipe.query_async::<()>(&mut self.con()).await?;
        Ok(())
    }
}

/// The publishes of one stream entry; none for a control entry or a batch
/// that cannot be decoded (it is skipped, as the inbox reader skips it).
fn decode_entry(entry: StreamEntry) -> InboxEntry {
    let messages = entry
        .get(FIELD_MESSAGES.as_bytes())
        .and_then(|raw| wire::decode_batch(raw.clone()).ok())
        .unwrap_or_default();
    InboxEntry {
        id: entry.id,
        messages,
    }
}

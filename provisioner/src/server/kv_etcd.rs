//! The shared store: [`Kv`] on etcd, for several servers over one state (`--store
//! etcd://HOST:PORT,...`). etcd's own model is the interface's: a key's version is its
//! `mod_revision`, and a [`Txn`] is one etcd transaction (compares on `mod_revision`, or
//! `version == 0` for "absent", then puts and deletes), so a compare-and-swap decided on
//! one server holds against every other: two servers can never both spend one token.
//! A write is acknowledged by etcd only once a quorum has it on disk.
//!
//! The interface is synchronous (the embedded store is a file); etcd's client is not.
//! The client runs on a runtime of its own (one thread), and each call waits for its
//! answer, bounded by [`TIMEOUT`], so an unreachable etcd is an error and never a hang.

use std::sync::mpsc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn as EtcdTxn, TxnOp,
};

use crate::error::{Error, Result};
use crate::server::kv::{Entry, Kv, Retention, Txn, LIVE_TTL};

/// Every key of plinth's lives below this prefix, so that an etcd shared with other
/// programs (a Kubernetes control plane's) keeps them apart.
pub const PREFIX: &str = "/plinth/";

/// How long one request may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Keys read per range request: etcd's and the client's message size limits (about
/// 1.5 and 4 MiB) would refuse one answer holding a large fleet.
const PAGE: i64 = 500;

fn err(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Error {
    let what = what.into();
    move |e| Error::Store {
        what,
        reason: e.to_string(),
    }
}

/// The store on etcd.
pub struct EtcdKv {
    client: Client,
    endpoints: Vec<String>,
    retention: Retention,
    /// The lease of the current history slot ([`Retention::slot`]): its number and id.
    /// History written in one slot shares one lease, so etcd keeps one lease per slot
    /// and server (16 over the time kept, or one an hour when that is longer), not one
    /// per key.
    history_lease: std::sync::Mutex<Option<(u64, i64)>>,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdKv")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// The endpoints of a `--store` value: `etcd://host:port[,host:port...]`; an error names
/// `--store` and says what is wrong.
pub fn parse_url(url: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::Config {
        what: "--store".into(),
        reason: format!("{url:?}: {why}"),
    };
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("the only store besides the embedded one is etcd://HOST:PORT,..."))?;
    let mut out = Vec::new();
    for ep in rest.split(',') {
        let ep = ep.trim();
        let (host, port) = ep
            .rsplit_once(':')
            .ok_or_else(|| bad(&format!("{ep:?} has no :PORT")))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad(&format!("{ep:?} is not HOST:PORT")));
        }
        out.push(format!("http://{ep}"));
    }
    Ok(out)
}

impl EtcdKv {
    /// Connects to etcd at `endpoints` (`http://host:port`) and checks that it answers.
    pub fn connect(endpoints: Vec<String>, retention: Retention) -> Result<EtcdKv> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("plinth-etcd")
            .enable_all()
            .build()
            .map_err(crate::error::io(
                "starting the etcd client's thread",
                "etcd",
            ))?;
        let opts = ConnectOptions::new()
            .with_timeout(TIMEOUT)
            .with_connect_timeout(TIMEOUT);
        let eps = endpoints.clone();
        let client = block(&rt, async move { Client::connect(eps, Some(opts)).await })?.map_err(
            err(format!("connecting to etcd at {}", endpoints.join(","))),
        )?;
        let kv = EtcdKv {
            client,
            endpoints,
            retention,
            history_lease: std::sync::Mutex::new(None),
            rt: Some(rt),
        };
        // Connecting is lazy: ask once, so that a wrong address fails the start.
        kv.size()?;
        Ok(kv)
    }

    /// The lease history written now goes on: the current slot's, granted when the
    /// slot begins, to expire at the slot's expiry. Two threads may both grant one at a
    /// slot's start; the spare expires with the other.
    fn history_lease(&self) -> Result<i64> {
        let now = crate::schema::unix_time();
        let (slot, expires) = self.retention.slot(now);
        let cached = *self.history_lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, id)) = cached.filter(|(s, _)| *s == slot) {
            return Ok(id);
        }
        let ttl = i64::try_from(expires.saturating_sub(now)).unwrap_or(i64::MAX);
        let id = self
            .call(move |mut c| async move { c.lease_grant(ttl, None).await })?
            .map_err(err(format!("granting a lease of {ttl}s for history")))?
            .id();
        *self.history_lease.lock().unwrap_or_else(|p| p.into_inner()) = Some((slot, id));
        Ok(id)
    }

    /// Runs `f` with a client on the client's runtime and waits for its answer.
    fn call<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let rt = self.rt.as_ref().ok_or_else(|| Error::Store {
            what: "etcd".into(),
            reason: "the client is shutting down".into(),
        })?;
        block(rt, f(self.client.clone()))
    }
}

/// Runs `fut` on `rt` from any thread (a runtime's worker included: the caller only
/// waits on a channel) and waits for it.
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    // The client's own timeout ends every request; this one only guards against a
    // future that never ends for another reason.
    rx.recv_timeout(TIMEOUT * 3).map_err(|_| Error::Store {
        what: "etcd".into(),
        reason: format!("no answer within {:?}", TIMEOUT * 3),
    })
}

impl Drop for EtcdKv {
    fn drop(&mut self) {
        // A runtime may not be dropped (which blocks) inside another's async context.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The key one past every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A server's liveness key.
fn live_key(id: &str) -> String {
    format!("{PREFIX}live/{id}")
}

/// A lease of [`LIVE_TTL`] with the liveness key on it.
async fn live_lease(c: &mut Client, key: &str) -> std::result::Result<i64, etcd_client::Error> {
    let ttl = i64::try_from(LIVE_TTL.as_secs()).unwrap_or(3);
    let lease = c.lease_grant(ttl, None).await?.id();
    c.put(key, "", Some(PutOptions::new().with_lease(lease)))
        .await?;
    Ok(lease)
}

/// Renews the liveness lease a few times per [`LIVE_TTL`], for as long as the process
/// lives. A renewal that fails (etcd out of reach longer than the lease) starts over
/// with a new lease: the server is alive again to the others once etcd answers.
async fn keep_alive(mut c: Client, key: String, mut lease: i64) {
    let pause = LIVE_TTL / 3;
    loop {
        if let Ok((mut keeper, mut answers)) = c.lease_keep_alive(lease).await {
            loop {
                tokio::time::sleep(pause).await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                // Answered well within the lease, or it is renewed afresh.
                match tokio::time::timeout(pause, answers.message()).await {
                    Ok(Ok(Some(a))) if a.ttl() > 0 => {}
                    _ => break,
                }
            }
        }
        loop {
            tokio::time::sleep(pause).await;
            if let Ok(l) = live_lease(&mut c, &key).await {
                lease = l;
                break;
            }
        }
    }
}

fn version(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

impl Kv for EtcdKv {
    fn get(&self, key: &str) -> Result<Option<Entry>> {
        let full = format!("{PREFIX}{key}");
        let what = format!("reading {full}");
        let resp = self
            .call(move |mut c| async move { c.get(full, None).await })?
            .map_err(err(what))?;
        Ok(resp.kvs().first().map(|kv| Entry {
            value: kv.value().to_vec(),
            version: version(kv.mod_revision()),
        }))
    }

    fn get_relaxed(&self, key: &str) -> Result<Option<Entry>> {
        let full = format!("{PREFIX}{key}");
        let what = format!("reading {full}");
        let resp = self
            .call(move |mut c| async move {
                c.get(full, Some(GetOptions::new().with_serializable()))
                    .await
            })?
            .map_err(err(what))?;
        Ok(resp.kvs().first().map(|kv| Entry {
            value: kv.value().to_vec(),
            version: version(kv.mod_revision()),
        }))
    }

    fn range(&self, prefix: &str) -> Result<Vec<(String, Entry)>> {
        let full = format!("{PREFIX}{prefix}");
        let end = prefix_end(full.as_bytes());
        let mut from = full.as_bytes().to_vec();
        let mut out = Vec::new();
        // Every page at the revision of the first, so that the whole range is one
        // consistent view, as the embedded store's read transaction is.
        let mut at = 0;
        loop {
            let (key, range_end, what) = (from.clone(), end.clone(), format!("reading {full}*"));
            let resp = self
                .call(move |mut c| async move {
                    let opts = GetOptions::new()
                        .with_range(range_end)
                        .with_limit(PAGE)
                        .with_revision(at);
                    c.get(key, Some(opts)).await
                })?
                .map_err(err(what))?;
            if at == 0 {
                at = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let k = String::from_utf8_lossy(kv.key());
                let k = k.strip_prefix(PREFIX).unwrap_or(&k).to_string();
                out.push((
                    k,
                    Entry {
                        value: kv.value().to_vec(),
                        version: version(kv.mod_revision()),
                    },
                ));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn commit(&self, txn: Txn) -> Result<bool> {
        if txn.compare.is_empty() && txn.is_empty() {
            return Ok(true);
        }
        let compares: Vec<Compare> = txn
            .compare
            .iter()
            .map(|(k, v)| {
                let key = format!("{PREFIX}{k}");
                match v {
                    Some(rev) => Compare::mod_revision(
                        key,
                        CompareOp::Equal,
                        i64::try_from(*rev).unwrap_or(i64::MAX),
                    ),
                    None => Compare::version(key, CompareOp::Equal, 0),
                }
            })
            .collect();
        let mut ops: Vec<TxnOp> = txn
            .put
            .into_iter()
            .map(|(k, v)| TxnOp::put(format!("{PREFIX}{k}"), v, None))
            .collect();
        if !txn.history.is_empty() {
            let lease = self.history_lease()?;
            ops.extend(txn.history.into_iter().map(|(k, v)| {
                TxnOp::put(
                    format!("{PREFIX}{k}"),
                    v,
                    Some(PutOptions::new().with_lease(lease)),
                )
            }));
        }
        ops.extend(txn.delete_prefix.into_iter().map(|p| {
            TxnOp::delete(
                format!("{PREFIX}{p}"),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
        }));
        ops.extend(
            txn.delete
                .into_iter()
                .map(|k| TxnOp::delete(format!("{PREFIX}{k}"), None)),
        );
        let what = format!("a transaction of {} writes", ops.len());
        let etxn = EtcdTxn::new().when(compares).and_then(ops);
        let resp = self
            .call(move |mut c| async move { c.txn(etxn).await })?
            .map_err(err(what))?;
        Ok(resp.succeeded())
    }

    fn size(&self) -> Result<u64> {
        let resp = self
            .call(|mut c| async move { c.status().await })?
            .map_err(err(format!(
                "asking etcd at {} for its status",
                self.endpoints.join(",")
            )))?;
        Ok(u64::try_from(resp.db_size()).unwrap_or(0))
    }

    fn announce(&self, id: &str) -> Result<()> {
        let key = live_key(id);
        let what = format!("announcing server {id} on etcd");
        let k = key.clone();
        let lease = self
            .call(move |mut c| async move { live_lease(&mut c, &k).await })?
            .map_err(err(what))?;
        if let Some(rt) = &self.rt {
            rt.spawn(keep_alive(self.client.clone(), key, lease));
        }
        Ok(())
    }

    fn alive(&self, id: &str) -> Result<bool> {
        let key = live_key(id);
        let what = format!("reading {key}");
        let resp = self
            .call(move |mut c| async move { c.get(key, None).await })?
            .map_err(err(what))?;
        Ok(!resp.kvs().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_read_or_refused_by_name() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379,10.0.0.2:2379").expect("two endpoints"),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        for bad in [
            "redis://x:1",
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://:2379",
        ] {
            let e = parse_url(bad).expect_err(bad).to_string();
            assert!(e.contains("--store"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_prefix_ends_past_every_key_it_starts() {
        assert_eq!(prefix_end(b"/plinth/m/"), b"/plinth/m0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}

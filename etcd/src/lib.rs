//! A thin client of etcd's v3 API: reads, transactions, leases and member status, over the
//! workspace's own tonic, with the .proto compiled by protox (no protoc needed to build).
//!
//! It knows several members of one etcd cluster and talks to one at a time. A call that the
//! member cannot serve (unreachable, timed out, no leader, leader changed) is sent to the next
//! member, until every member has been tried once; then the call fails with
//! [`EtcdError::Unavailable`], and whether to try again is the caller's choice.
//!
//! A call that failed that way may still have been applied (the answer was lost, not the
//! request). Callers make their writes safe to repeat, or read back what happened: see the
//! coordinator's etcd log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Generated messages and clients of the subset of etcd's API in `proto/`.
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub use pb::{KeyValue, ResponseOp, TxnRequest, TxnResponse};

/// Time allowed to open a connection to a member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest value etcd takes in one request by default (`--max-request-bytes`, 1.5 MiB); a
/// transaction's puts together must stay below it.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Most operations etcd takes in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No member could serve the call (down, partitioned, timed out, no leader): it may
    /// succeed later, and, for a write, it may have been applied.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// A member answered with an error that trying again will not change (bad request,
    /// quota exceeded, lease not found...).
    #[error("etcd refused the call: {0}")]
    Refused(String),
    /// An address that is not a URL.
    #[error("etcd address {0:?}: {1}")]
    BadAddress(String, String),
}

impl EtcdError {
    /// Whether the same call may succeed if made again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EtcdError::Unavailable(_))
    }
}

/// Whether a member's answer means "ask again, perhaps elsewhere".
fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    match s.code() {
        Unavailable | DeadlineExceeded | Unknown | Cancelled | Aborted => true,
        // Both the quota alarm and overload come as RESOURCE_EXHAUSTED; only overload passes.
        ResourceExhausted => s.message().contains("too many requests"),
        _ => false,
    }
}

/// The first key after every key that starts with `prefix`: the `range_end` of a prefix scan.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

/// Splits `etcd://HOST:PORT,HOST:PORT` (or a list of `http://` URLs) into member URLs.
pub fn parse_endpoints(spec: &str) -> Result<Vec<String>, EtcdError> {
    let rest = spec.strip_prefix("etcd://").unwrap_or(spec);
    let mut out = Vec::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = if part.starts_with("http://") || part.starts_with("https://") {
            part.to_owned()
        } else {
            format!("http://{part}")
        };
        url.parse::<tonic::transport::Uri>()
            .map_err(|e| EtcdError::BadAddress(part.to_owned(), e.to_string()))?;
        out.push(url);
    }
    if out.is_empty() {
        return Err(EtcdError::BadAddress(
            spec.to_owned(),
            "names no member (expected etcd://HOST:PORT,HOST:PORT,...)".into(),
        ));
    }
    Ok(out)
}

struct Member {
    url: String,
    channel: Channel,
}

/// A client of one etcd cluster. Cheap to share behind an `Arc`; every call may go to any
/// member.
pub struct EtcdClient {
    members: Vec<Member>,
    /// The member calls go to, until it fails one.
    current: AtomicUsize,
    /// Deadline of one call at one member.
    timeout: Duration,
}

impl EtcdClient {
    /// A client of the members at `urls` (connections open lazily, on first use).
    pub fn new(urls: &[String], timeout: Duration) -> Result<Self, EtcdError> {
        let mut members = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| EtcdError::BadAddress(url.clone(), e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            members.push(Member {
                url: url.clone(),
                channel: endpoint.connect_lazy(),
            });
        }
        if members.is_empty() {
            return Err(EtcdError::BadAddress(String::new(), "no member".into()));
        }
        Ok(Self {
            members,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    /// Makes a call at the current member, then at each other one in turn while the answer
    /// says to ask elsewhere.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, EtcdError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.members.len();
        let mut last = String::new();
        for _ in 0..n {
            let i = self.current.load(Ordering::Relaxed) % n;
            let member = &self.members[i];
            match tokio::time::timeout(self.timeout, f(member.channel.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) if retryable(&s) => {
                    last = format!("{}: {:?}: {}", member.url, s.code(), s.message());
                }
                Ok(Err(s)) => {
                    return Err(EtcdError::Refused(format!(
                        "{what} at {}: {:?}: {}",
                        member.url,
                        s.code(),
                        s.message()
                    )));
                }
                Err(_) => {
                    last = format!("{}: no answer within {:?}", member.url, self.timeout);
                }
            }
            tracing::debug!(what, error = %last, "etcd member failed a call; trying the next");
            let _ =
                self.current
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
        }
        Err(EtcdError::Unavailable(format!(
            "{what}: no member answered (last: {last})"
        )))
    }

    fn kv(ch: Channel) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// A linearizable read of the keys in `[key, range_end)` (or `key` alone).
    pub async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        self.call("range", |ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).range(req).await?.into_inner()) }
        })
        .await
    }

    /// The key, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let resp = self
            .range(pb::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// At most `limit` keys (0: all) that start with `prefix`, from `start` on, in key order,
    /// and whether more follow.
    pub async fn scan(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool), EtcdError> {
        let resp = self
            .range(pb::RangeRequest {
                key: start.max(prefix).to_vec(),
                range_end: prefix_end(prefix),
                limit: limit as i64,
                ..Default::default()
            })
            .await?;
        Ok((resp.kvs, resp.more))
    }

    /// Runs a transaction: its comparisons, then its success or failure operations.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call("txn", |ch| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).txn(req).await?.into_inner()) }
        })
        .await
    }

    /// A lease of `ttl` (whole seconds, as etcd counts them); returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .call("lease grant", |ch| async move {
                Ok(pb::lease_client::LeaseClient::new(ch)
                    .lease_grant(pb::LeaseGrantRequest { ttl: secs, id: 0 })
                    .await?
                    .into_inner())
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(EtcdError::Refused(format!("lease grant: {}", resp.error)));
        }
        Ok(resp.id)
    }

    /// Ends a lease now; its keys go with it.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("lease revoke", |ch| async move {
            pb::lease_client::LeaseClient::new(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id: lease })
                .await?;
            Ok(())
        })
        .await
    }

    /// Renews a lease once; returns the TTL it now has, 0 if it is gone (expired or revoked).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        self.call("lease keep-alive", |ch| async move {
            let mut answers = pb::lease_client::LeaseClient::new(ch)
                .lease_keep_alive(futures::stream::iter([pb::LeaseKeepAliveRequest {
                    id: lease,
                }]))
                .await?
                .into_inner();
            match answers.message().await? {
                Some(a) => Ok(a.ttl),
                None => Err(tonic::Status::unavailable(
                    "keep-alive stream closed without an answer",
                )),
            }
        })
        .await
    }

    /// The status of the member at `url` (asked directly, not failed over): its id and the
    /// leader's.
    pub async fn member_status(&self, url: &str) -> Result<pb::StatusResponse, EtcdError> {
        let member = self.members.iter().find(|m| m.url == url).ok_or_else(|| {
            EtcdError::BadAddress(url.into(), "not a member of this client".into())
        })?;
        let mut client = pb::maintenance_client::MaintenanceClient::new(member.channel.clone());
        match tokio::time::timeout(self.timeout, client.status(pb::StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(EtcdError::Unavailable(format!("{url}: {}", s.message()))),
            Err(_) => Err(EtcdError::Unavailable(format!("{url}: no answer"))),
        }
    }

    /// Discards the history of every key before `revision` (deleted keys and old values).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call("compact", |ch| async move {
            Self::kv(ch)
                .compact(pb::CompactionRequest {
                    revision,
                    physical: false,
                })
                .await?;
            Ok(())
        })
        .await
    }
}

/// Builders for the parts of a transaction.
pub mod op {
    use super::pb;
    use super::pb::compare::{CompareResult, CompareTarget, TargetUnion};

    fn compare(
        key: &[u8],
        result: CompareResult,
        target: CompareTarget,
        v: TargetUnion,
    ) -> pb::Compare {
        pb::Compare {
            result: result as i32,
            target: target as i32,
            key: key.to_vec(),
            target_union: Some(v),
        }
    }

    /// Holds while `key` exists.
    pub fn exists(key: &[u8]) -> pb::Compare {
        compare(
            key,
            CompareResult::Greater,
            CompareTarget::Version,
            TargetUnion::Version(0),
        )
    }

    /// Holds while `key` does not exist.
    pub fn absent(key: &[u8]) -> pb::Compare {
        compare(
            key,
            CompareResult::Equal,
            CompareTarget::Version,
            TargetUnion::Version(0),
        )
    }

    /// Holds while `key` was last written at `revision` (0: it does not exist).
    pub fn unchanged(key: &[u8], revision: i64) -> pb::Compare {
        compare(
            key,
            CompareResult::Equal,
            CompareTarget::Mod,
            TargetUnion::ModRevision(revision),
        )
    }

    pub fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key,
                value,
                lease,
                prev_kv: false,
            })),
        }
    }

    pub fn delete(key: Vec<u8>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key,
                    range_end: Vec::new(),
                },
            )),
        }
    }

    pub fn get(key: Vec<u8>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key,
                ..Default::default()
            })),
        }
    }
}

/// The keys a transaction's range operation read, in order of the operations.
pub fn ranges(resp: &TxnResponse) -> Vec<Vec<KeyValue>> {
    resp.responses
        .iter()
        .filter_map(|r| match &r.response {
            Some(pb::response_op::Response::ResponseRange(rr)) => Some(rr.kvs.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_and_endpoint_lists() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(
            parse_endpoints("etcd://127.0.0.1:2379, 127.0.0.1:2479").unwrap(),
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:2479"]
        );
        assert!(parse_endpoints("etcd://").is_err());
        assert!(parse_endpoints("etcd://bad host:1").is_err());
    }
}

//! The coordinator's etcd log against a real etcd (one member): group commit into batched
//! transactions, a key written many times while earlier writes of it are still queued (etcd
//! refuses a transaction that names a key twice), and fencing once the lease is gone.

use std::time::Duration;

use txn_coordinator::log::etcd::{EtcdConfig, EtcdLog};
use txn_coordinator::log::{CoordLog, SharedLog};
use txn_tests::cluster::EtcdCluster;
use txn_types::store::WriteBatch;

fn put(key: &str, value: &str) -> WriteBatch {
    let mut b = WriteBatch::default();
    b.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_coalesce_and_a_writer_without_its_lease_is_fenced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = EtcdCluster::start(dir.path(), 1).await?;
    let config = EtcdConfig {
        endpoints: etcd.urls(),
        prefix: "test/".into(),
        lease_ttl: Duration::from_secs(2),
        url: "http://127.0.0.1:1".into(),
    };
    let log = EtcdLog::open(config.clone()).await?;
    let other = EtcdLog::open(config).await?;
    assert_ne!(
        log.epoch(),
        other.epoch(),
        "every instance takes its own epoch"
    );

    // Many writes of one key and of others, queued faster than etcd answers: one after the
    // other they must all land, in order, in fewer transactions than batches.
    let mut last = None;
    for i in 0..200 {
        last = Some(log.write_lazy(put("s/saga", &i.to_string()))?);
        log.write_lazy(put(&format!("k/{}", i % 7), "v"))?;
        if i % 50 == 20 {
            let mut b = WriteBatch::default();
            b.delete(b"s/saga".to_vec());
            log.write_lazy(b)?;
        }
    }
    log.wait(last.expect("written")).await?;
    assert_eq!(log.get(b"s/saga").await?, Some(b"199".to_vec()));
    assert_eq!(
        other.get(b"s/saga").await?,
        Some(b"199".to_vec()),
        "durable in etcd"
    );
    let stats = log.stats();
    assert!(
        stats.fsyncs < stats.durable_writes,
        "group commit: {} transactions for {} batches",
        stats.fsyncs,
        stats.durable_writes
    );

    // Without its lease, nothing the instance writes lands, and it learns it lost the lease.
    log.leave().await?;
    let refused = log.write_durable(put("c/1.1", "late")).await;
    assert!(
        refused.is_err(),
        "a write after the lease was revoked landed"
    );
    assert_eq!(other.get(b"c/1.1").await?, None);
    let mut lost = log.lost();
    tokio::time::timeout(Duration::from_secs(10), lost.wait_for(Option::is_some)).await??;
    assert!(log.admits().is_err());
    assert!(other.admits().is_ok());
    other.write_durable(put("c/2.1", "fine")).await?;
    Ok(())
}

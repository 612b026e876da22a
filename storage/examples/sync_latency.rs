//! Measures the cost of one small durable write through SledStore (apply + flush + fdatasync).
use std::time::Instant;
use txn_storage::SledStore;
use txn_types::store::{Store, WriteBatch};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let mut ts = Vec::new();
    for i in 0..1000u32 {
        let mut b = WriteBatch::default();
        b.put(format!("k{i}").into_bytes(), vec![7u8; 100]);
        let t = Instant::now();
        s.apply(b).unwrap();
        s.sync().unwrap();
        ts.push(t.elapsed().as_micros());
    }
    ts.sort();
    println!("sled apply+sync p50 {} us p99 {} us", ts[500], ts[990]);
}

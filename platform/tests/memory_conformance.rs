//! The memory adapters pass the port conformance suites.

use sluice_platform::conformance::{kv_suite, queue_suite, reply_suite};
use sluice_platform::memory::{MemoryKv, MemoryStreams};

#[tokio::test]
async fn memory_queue_passes_the_queue_suite() {
    queue_suite(|| async { (MemoryStreams::new(), "t".to_string()) }).await;
}

#[tokio::test]
async fn memory_streams_pass_the_reply_suite() {
    reply_suite(|| async { (MemoryStreams::new(), "t".to_string()) }).await;
}

#[tokio::test]
async fn memory_kv_passes_the_kv_suite() {
    kv_suite(|| async { (MemoryKv::new(), "t".to_string()) }).await;
}

#[tokio::test]
async fn injected_faults_fail_exactly_the_next_n_operations() {
    use sluice_platform::{BackendError, Queue};
    let q = MemoryStreams::new();
    q.faults().fail_next(2);
    assert_eq!(q.ensure_group("s").await, Err(BackendError::Injected));
    assert_eq!(
        q.depth("s").await.map(|d| d.entries),
        Err(BackendError::Injected)
    );
    assert!(
        q.ensure_group("s").await.is_ok(),
        "the third operation succeeds"
    );
}

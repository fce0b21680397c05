//! A process given a derived key directory holds only the keys listed in
//! it (docs/wire-format.md). Where a key is missing, nothing panics: the
//! ingress answers `500 key_missing`; a worker that cannot sign its next
//! step dead-letters the entry and answers `key_missing` when it can still
//! sign a reply, and otherwise leaves the caller to time out. Each case is
//! counted (`sluice_worker_entries_total{outcome="key_missing"}`).
//!
//! ```text
//!   POST /v1/hops ─▶ web signs request(one) ─▶ one: echo, signs request(two) ─▶ two: echo, signs reply(two)
//! ```

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{error_parts, json_response, metric, scrape, url};
use serde_json::{json, Value};
use sluice_platform::keyring::derived_files;
use sluice_platform::{KeyRing, Keys, Kind};
use sluice_web_ingress::Ingress;

/// Starts the two-hops pipeline (memory profile: every group inline) with
/// a derived directory holding exactly `needs`.
async fn start_holding(dir: &Path, needs: &[(Kind, &str)]) -> Ingress {
    let raw = BTreeMap::from([("k1".to_string(), vec![7u8; 32])]);
    let ring = KeyRing::from_raw("k1", &raw).unwrap();
    let pipeline = Keys::new("default", "two-hops");
    for (name, content) in derived_files(&ring, pipeline.pipeline(), needs).unwrap() {
        std::fs::write(dir.join(name), content).unwrap();
    }
    let mut config = common::config(&common::pipeline("two-hops.yaml"));
    config.keys = Some(dir.to_path_buf());
    sluice_web_ingress::start(config)
        .await
        .expect("an ingress starts with missing keys, and warns")
}

async fn post(ingress: &Ingress) -> (u16, Value) {
    let resp = common::client()
        .post(url(ingress.local_addr(), "/v1/hops"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("POST /v1/hops");
    let (status, _, body) = json_response(resp).await;
    (status, body)
}

fn outcome(ingress: &Ingress, group: &str, outcome: &str) -> f64 {
    metric(
        &scrape(ingress),
        "sluice_worker_entries_total",
        &[("group", group), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

async fn dead_letters(ingress: &Ingress) -> u64 {
    let st = ingress.state();
    st.queue
        .depth(&st.keys.dead_letter())
        .await
        .expect("depth of the dead-letter stream")
        .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_key_the_derived_directory_serves() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = start_holding(
        dir.path(),
        &[
            (Kind::Request, "one"),
            (Kind::Request, "two"),
            (Kind::Reply, "one"),
            (Kind::Reply, "two"),
        ],
    )
    .await;
    assert_eq!(ingress.state().signer.group(), "web");
    assert_eq!(post(&ingress).await, (200, json!({"n": 1})));
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_without_the_entry_groups_key_answers_key_missing() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = start_holding(dir.path(), &[(Kind::Reply, "two")]).await;
    let (status, body) = post(&ingress).await;
    assert_eq!(status, 500, "{body}");
    let (code, message, _) = error_parts(&body);
    assert_eq!(code, "key_missing");
    assert!(
        !message.contains("one") && !message.contains("k1"),
        "the caller is not told which key: {message}"
    );
    assert_eq!(ingress.waiters(), 0);
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_forward_dead_letters_and_answers_key_missing() {
    let dir = tempfile::tempdir().unwrap();
    // No request key of `two`: `one` cannot send its output on.
    let ingress = start_holding(
        dir.path(),
        &[
            (Kind::Request, "one"),
            (Kind::Reply, "one"),
            (Kind::Reply, "two"),
        ],
    )
    .await;
    let (status, body) = post(&ingress).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(error_parts(&body).0, "key_missing");
    assert_eq!(dead_letters(&ingress).await, 1, "kept for a replay");
    common::eventually(
        std::time::Duration::from_secs(5),
        "the worker to count the entry as key_missing",
        || std::future::ready((outcome(&ingress, "one", "key_missing") == 1.0).then_some(())),
    )
    .await;
    common::stop(ingress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_sign_its_answer_dead_letters_and_the_caller_times_out() {
    let dir = tempfile::tempdir().unwrap();
    // No reply key of `two`: its answer cannot be signed, nor an error.
    let ingress = start_holding(
        dir.path(),
        &[
            (Kind::Request, "one"),
            (Kind::Request, "two"),
            (Kind::Reply, "one"),
        ],
    )
    .await;
    let (status, body) = post(&ingress).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(error_parts(&body).0, "timeout");
    common::eventually(
        std::time::Duration::from_secs(5),
        "the worker to dead-letter the entry and count it as key_missing",
        || async {
            (outcome(&ingress, "two", "key_missing") == 1.0 && dead_letters(&ingress).await == 1)
                .then_some(())
        },
    )
    .await;
    common::stop(ingress).await;
}

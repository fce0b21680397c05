//! Entries pushed straight onto an inline worker's queue, bypassing the
//! ingress: only genuine ones are executed; each forgery is refused and
//! counted by its reason (DESIGN §6).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, metric, scrape, url, Calls, Counting};
use serde_json::json;
use sluice_platform::clock::now_ms;
use sluice_platform::keyring::random_key;
use sluice_platform::{Envelope, KeyRing, Kind, SharedKeyRing, Signer, StreamEntry};
use sluice_web_ingress::server::AppState;
use sluice_web_ingress::Ingress;

/// A request for node `count` of this pipeline, addressed to `dest`, with
/// a reply address of this ingress and a deadline 30s away.
fn request(st: &AppState, dest: &str) -> Envelope {
    Envelope {
        kind: Kind::Request,
        pipeline: st.keys.pipeline().to_string(),
        dest: dest.to_string(),
        cid: uuid::Uuid::new_v4().to_string(),
        rid: "forged".to_string(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline: now_ms() + 30_000,
        attempt: 1,
        node: Some("count".to_string()),
        plan: None,
        reply_to: Some(st.ingress_id.clone()),
        live: None,
        seq: None,
        last_seq: None,
        payload: json!({"forged": true}),
        error: None,
    }
}

fn rejected(ingress: &Ingress, reason: &str) -> f64 {
    metric(
        &scrape(ingress),
        "sluice_envelopes_rejected_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// Signs `env`; the ingress's ring (a full ring) holds every key.
fn signed(signer: &Signer, env: &mut Envelope) -> StreamEntry {
    signer.sign(env).expect("a ring derives every key")
}

async fn push(st: &AppState, entry: StreamEntry) {
    st.queue
        .push(&st.keys.queue("work"), entry)
        .await
        .expect("push onto the work queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_pushed_onto_a_worker_queue_are_refused_by_reason_and_never_executed() {
    let calls = Arc::new(Calls::default());
    let nodes = {
        let calls = calls.clone();
        common::registry_with("rust/count", move || Counting {
            calls: calls.clone(),
        })
    };
    let ingress = common::start_with("counted.yaml", nodes).await;
    let st = ingress.state().clone();
    let kid = String::from_utf8(signed(&st.signer, &mut request(&st, "work")).k.to_vec()).unwrap();

    // (a) Garbage in every field.
    push(
        &st,
        StreamEntry {
            v: Bytes::from_static(b"\xff\x00garbage"),
            k: Bytes::from_static(b"??"),
            m: Bytes::from_static(b"{not an envelope"),
            s: Bytes::from_static(b"zz"),
            note: Bytes::new(),
        },
    )
    .await;
    // (b) Signed under the ingress's kid, with another key.
    let mut raw = BTreeMap::new();
    raw.insert(kid.clone(), random_key().to_vec());
    let impostor = Signer::new(
        SharedKeyRing::fixed(KeyRing::from_raw(&kid, &raw).expect("a ring")),
        &st.keys,
        "web",
    );
    push(&st, signed(&impostor, &mut request(&st, "work"))).await;
    //     ... and with a ring the ingress has never seen.
    let stranger = Signer::new(SharedKeyRing::fixed(KeyRing::ephemeral()), &st.keys, "web");
    push(&st, signed(&stranger, &mut request(&st, "work"))).await;
    //     ... and a genuine reply presented as a request: its key id
    //     (`<kid>/web`) is no request's.
    let mut reply = request(&st, "work");
    reply.kind = Kind::Reply;
    push(&st, signed(&st.signer, &mut reply)).await;
    // (c) Genuinely signed, for another group: signed with that group's
    // request key, it fails the MAC in this one.
    push(&st, signed(&st.signer, &mut request(&st, "elsewhere"))).await;

    let expected = [("bad_version", 1.0), ("bad_mac", 2.0), ("unknown_kid", 2.0)];
    {
        let ingress = &ingress;
        eventually(
            Duration::from_secs(10),
            "every forged entry to be refused by its reason, and dropped by the worker",
            move || {
                let dropped = metric(
                    &scrape(ingress),
                    "sluice_worker_entries_total",
                    &[("group", "work"), ("outcome", "rejected")],
                );
                std::future::ready(
                    (dropped == Some(5.0)
                        && expected.iter().all(|(r, n)| rejected(ingress, r) == *n))
                    .then_some(()),
                )
            },
        )
        .await;
    }
    {
        let st = &st;
        eventually(
            Duration::from_secs(5),
            "the refused entries to be acknowledged and gone from the queue",
            move || async move {
                let depth = st.queue.depth(&st.keys.queue("work")).await.ok()?;
                (depth.entries == 0).then_some(())
            },
        )
        .await;
    }
    assert_eq!(calls.started(), 0, "a forged entry was executed");

    // Control: the same path carries a genuine entry to the node. The same
    // entry pushed again runs again: the memory profile has no replay guard,
    // as nothing outside this process can write its queues (the guard is
    // tested on Redis: tests/e2e replay_attacks, platform signing).
    let genuine = signed(&st.signer, &mut request(&st, "work"));
    push(&st, genuine.clone()).await;
    push(&st, genuine).await;
    {
        let calls = &calls;
        eventually(
            Duration::from_secs(10),
            "the genuine entry and its copy to run",
            move || std::future::ready((calls.finished() == 2).then_some(())),
        )
        .await;
    }
    assert_eq!(rejected(&ingress, "replay"), 0.0, "no guard, no replay");

    // And the ingress still serves.
    let resp = common::client()
        .post(url(ingress.local_addr(), "/v1/count"))
        .json(&json!({"real": true}))
        .send()
        .await
        .expect("POST /v1/count");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"real": true})
    );
    assert_eq!(calls.finished(), 3);
    for (reason, n) in expected {
        assert_eq!(rejected(&ingress, reason), n, "{reason}");
    }
    common::stop(ingress).await;
}

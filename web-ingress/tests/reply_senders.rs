//! Who may answer a waiting caller (DESIGN §6, docs/wire-format.md): a
//! reply completes a waiter only when the group that signed it answers the
//! waiter's interface. Forged replies, signed with genuine reply keys of
//! groups that do not answer it, are refused as `wrong_sender` and counted;
//! the caller keeps waiting and gets the genuine answer.
//!
//! ```text
//!   POST /v1/gated ─▶ front: gate (held) ─▶ back: answer ─▶ reply
//!   test ─XADD r:<ingress>─▶ replies signed as side / as front ─▶ wrong_sender
//! ```

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, metric, scrape, url, NodeFuture};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sluice_exec_worker::{Node, NodeContext, NodeOutput, Registry};
use sluice_platform::clock::now_ms;
use sluice_platform::{Envelope, Kind, ReplyError};
use tokio::sync::Semaphore;

/// `rust/gate`: records the correlation id of each call, then waits for a
/// permit from the test before echoing its input.
#[derive(Clone)]
struct Gate {
    seen: Arc<Mutex<Vec<String>>>,
    open: Arc<Semaphore>,
}

impl Gate {
    /// A gate letting nothing through yet.
    fn closed() -> Self {
        Self {
            seen: Arc::default(),
            open: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Node for Gate {
    fn call<'s, 'c, 'f>(&'s self, input: Value, ctx: &'c NodeContext) -> NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            self.seen.lock().push(ctx.correlation_id.clone());
            if let Ok(permit) = self.open.acquire().await {
                permit.forget();
            }
            Ok(NodeOutput::value(input))
        })
    }
}

/// A reply to waiter `cid` of ingress `ingress_id`.
fn reply(
    pipeline: &str,
    ingress_id: &str,
    cid: &str,
    result: Result<Value, ReplyError>,
) -> Envelope {
    let request = Envelope {
        kind: Kind::Request,
        pipeline: pipeline.to_string(),
        dest: "back".into(),
        cid: cid.to_string(),
        rid: cid.to_string(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline: now_ms() + 30_000,
        attempt: 1,
        node: Some("answer".into()),
        plan: None,
        reply_to: Some(ingress_id.to_string()),
        live: None,
        seq: None,
        last_seq: None,
        payload: Value::Null,
        error: None,
    };
    request.reply(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_from_groups_that_do_not_answer_the_interface_are_refused_and_the_caller_keeps_waiting(
) {
    let gate = Gate::closed();
    let nodes: Registry = {
        let gate = gate.clone();
        common::registry_with("rust/gate", move || gate.clone())
    };
    let ingress = common::start_with("gated.yaml", nodes).await;
    let st = ingress.state().clone();
    let caller = tokio::spawn(
        common::client()
            .post(url(ingress.local_addr(), "/v1/gated"))
            .json(&json!({"genuine": true}))
            .send(),
    );
    let cid = {
        let seen = gate.seen.clone();
        eventually(
            Duration::from_secs(10),
            "the request to reach the gate",
            move || std::future::ready(seen.lock().first().cloned()),
        )
        .await
    };

    // Each signed with a genuine reply key (the ingress's own ring) of a
    // group that may not answer `gated`: side answers only `side`; front
    // lies on the path but does not terminate it, so it may fail the
    // request, never answer it.
    let pipeline = st.keys.pipeline().to_string();
    let forged = [
        ("side", Ok(json!({"forged": "side"}))),
        (
            "side",
            Err(ReplyError::new("node_failed", "forged by side")),
        ),
        ("front", Ok(json!({"forged": "front"}))),
    ];
    let stream = st.keys.reply(&st.ingress_id);
    for (group, result) in forged {
        let mut env = reply(&pipeline, &st.ingress_id, &cid, result);
        let entry = st
            .signer
            .for_group(group)
            .sign(&mut env)
            .expect("the ring derives every key");
        st.queue
            .push(&stream, entry)
            .await
            .expect("push onto the reply stream");
    }
    {
        let ingress = &ingress;
        eventually(
            Duration::from_secs(10),
            "the three forged replies to be refused as wrong_sender",
            move || {
                let n = metric(
                    &scrape(ingress),
                    "sluice_envelopes_rejected_total",
                    &[("reason", "wrong_sender")],
                );
                std::future::ready((n == Some(3.0)).then_some(()))
            },
        )
        .await;
    }
    assert_eq!(st.waiters.len(), 1, "the caller is still waiting");
    assert!(!caller.is_finished(), "no forged reply reached the caller");

    // The genuine answer still arrives.
    gate.open.add_permits(1);
    let resp = caller
        .await
        .expect("the caller's task")
        .expect("POST /v1/gated");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"genuine": true})
    );
    let text = scrape(&ingress);
    for reason in ["late", "duplicate"] {
        assert_eq!(
            metric(
                &text,
                "sluice_ingress_replies_dropped_total",
                &[("reason", reason)]
            )
            .unwrap_or(0.0),
            0.0,
            "refused replies are not counted as dropped ({reason})"
        );
    }
    common::stop(ingress).await;
}

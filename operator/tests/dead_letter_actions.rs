//! `kubectl sluice dlq` end to end: the plugin binary as an on-call user
//! who may read StreamPipelines and create DeadLetterActions (no Secret),
//! the operator binary with its documented RBAC on the API stand-in, and a
//! real `redis-server` as the pipeline's Redis (external mode: the operator
//! cannot reach a managed Redis's Service name from here). The dead letters
//! are written as a worker writes them, signed with the key ring the
//! operator generated.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use sluice_platform::envelope::{Envelope, Kind, ReplyError, StreamEntry};
use sluice_platform::metrics::Rejections;
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::{
    DeadLetterNote, KeyRing, Keys, Queue, RedisBackend, RedisConfig, ReplyChannel, SharedKeyRing,
    Signer, Verifier,
};
use support::*;

const PATIENCE: Duration = Duration::from_secs(30);
const NS: &str = "oncall";
const PIPELINE: &str = "p";

fn manifest() -> Value {
    json!({
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": PIPELINE},
        "spec": {
            "backends": {"queue": "redis", "kv": "redis", "reply": "redis"},
            "redis": {"mode": "external", "urlSecretRef": {"name": "redis-url", "key": "url"}},
            "interfaces": [{"name": "api", "path": "/v1/echo", "entry": "a", "timeout": "5s"}],
            "groups": [
                {"name": "web", "role": "ingress"},
                {"name": "cpu", "role": "worker"},
            ],
            "nodes": [
                {"name": "a", "group": "web", "uses": "builtin/echo", "next": "b"},
                {"name": "b", "group": "cpu", "uses": "builtin/echo"},
            ],
        }
    })
}

/// A `redis-server` of the test, and the Secret the manifest's external
/// Redis names (`redis-url`) holding its URL.
async fn external_redis(h: &Harness) -> anyhow::Result<RedisServer> {
    let redis = RedisServer::start(false);
    let secrets: Api<Secret> = Api::namespaced(h.admin.clone(), NS);
    let mut s = Secret::default();
    s.metadata.name = Some("redis-url".into());
    s.data = Some([("url".to_string(), ByteString(redis.url().into_bytes()))].into());
    secrets.create(&PostParams::default(), &s).await?;
    Ok(redis)
}

/// Runs the plugin as the kubeconfig's user: (exit code, stdout, stderr).
async fn plugin(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    kubectl_sluice(kubeconfig, NS, args).await
}

/// The key ring the operator generated for the pipeline.
async fn ring(h: &Harness) -> anyhow::Result<SharedKeyRing> {
    let secrets: Api<Secret> = Api::namespaced(h.admin.clone(), NS);
    let s = secrets.get(&format!("{PIPELINE}-ipc-keys")).await?;
    let files = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    Ok(SharedKeyRing::fixed(KeyRing::from_files(&files)?))
}

/// A request for node `b` on group `cpu`, as the ingress signs it.
fn request(signer: &Signer, rid: &str, payload: Value) -> StreamEntry {
    let now = sluice_platform::clock::now_ms();
    let mut env = Envelope {
        kind: Kind::Request,
        pipeline: format!("{NS}/{PIPELINE}"),
        dest: "cpu".into(),
        cid: "c-1".into(),
        rid: rid.into(),
        trace: None,
        ts: 0,
        nonce: String::new(),
        deadline: now + 5_000,
        attempt: 1,
        node: Some("b".into()),
        plan: None,
        reply_to: Some("ingress-gone".into()),
        live: None,
        seq: None,
        last_seq: None,
        payload,
        error: None,
    };
    signer.sign(&mut env).expect("signed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_call_user_lists_redrives_and_purges_dead_letters_without_any_secret(
) -> anyhow::Result<()> {
    let h = Harness::start_with(cluster_sim::ClusterSimOptions {
        rbac: true,
        ..sim_options()
    })
    .await?;
    grant_documented_rbac(&h, "op")?;
    h.namespace(NS)?;
    let redis = external_redis(&h).await?;
    let kubeconfig = namespace_user(
        &h,
        NS,
        "oncall",
        json!([
            {"apiGroups": ["sluice.dev"], "resources": ["streampipelines"], "verbs": ["get"]},
            {"apiGroups": ["sluice.dev"], "resources": ["deadletteractions"], "verbs": ["create", "get"]},
        ]),
    )?;
    let mut op = Operator::start(&h, "op", &["--queues-interval", "1s"]).await?;
    h.apply(NS, manifest()).await?;
    h.apply(NS, example("orders")).await?;
    h.wait_ready(NS, PIPELINE, PATIENCE).await?;

    // Two dead letters, as a worker of cpu writes them: a request that
    // failed, and an entry whose MAC does not verify.
    let ring = ring(&h).await?;
    let keys = Keys::new(NS, PIPELINE);
    let signer = Signer::new(ring.clone(), &keys, "web");
    let redis_client = RedisBackend::connect(RedisConfig::from_url(&redis.url())?).await?;
    let mut letter = request(&signer, "order-7", json!({"n": 7}));
    letter.note = DeadLetterNote::new(
        "cpu",
        5,
        &ReplyError {
            code: "node_failed".into(),
            message: "boom".into(),
        },
    )
    .encode()
    .into();
    let letter_id = redis_client.push(&keys.dead_letter(), letter).await?;
    let mut forged = request(&signer, "order-8", json!({"n": 8}));
    forged.s = vec![b'0'; forged.s.len()].into();
    let forged_id = redis_client.push(&keys.dead_letter(), forged).await?;

    // The queue observer counts them in status, and `status` shows them.
    h.wait_pipeline(
        NS,
        PIPELINE,
        "status.queues with 2 dead letters",
        PATIENCE,
        |v| v["status"]["queues"]["deadLetters"] == 2,
    )
    .await?;
    // A spec change makes the reconciler apply its status: the queues,
    // which are the observer's, stay.
    let mut changed = manifest();
    changed["spec"]["nodes"][1]["with"] = json!({"note": "changed"});
    h.apply(NS, changed).await?;
    let after = h
        .wait_pipeline(NS, PIPELINE, "generation 2 observed", PATIENCE, |v| {
            v["status"]["observedGeneration"] == 2
        })
        .await?;
    assert_eq!(after["status"]["queues"]["deadLetters"], 2, "{after:#}");

    let (code, out, err) = plugin(&kubeconfig, &["status", PIPELINE]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Dead letters: 2"), "{out}");
    assert!(out.contains("cpu    0        0"), "{out}");

    let (code, out, err) = plugin(&kubeconfig, &["dlq", "list", PIPELINE]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("deadletteraction {NS}/{PIPELINE}-dlq-")),
        "{err}"
    );
    assert!(
        out.contains(&format!("{letter_id}\t"))
            && out.contains("\tcpu\tb\torder-7\t")
            && out.contains("\t5\tnode_failed: boom"),
        "{out}"
    );
    let forged_line = out
        .lines()
        .find(|l| l.starts_with(&forged_id))
        .expect("the forged entry listed");
    assert!(forged_line.contains("refused:"), "{forged_line}");
    assert!(!forged_line.contains("order-8"), "{forged_line}");
    assert!(
        !out.contains("{\"n\":7}"),
        "payloads only on request: {out}"
    );
    let (code, out, _) = plugin(&kubeconfig, &["dlq", "list", PIPELINE, "--payloads"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("{\"n\":7}"), "{out}");
    assert!(
        !out.contains("{\"n\":8}"),
        "a refused entry's payload shown: {out}"
    );

    // A dry run sends nothing.
    let (code, out, err) = plugin(
        &kubeconfig,
        &["dlq", "redrive", PIPELINE, "--id", &letter_id, "--dry-run"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{letter_id}\twould be sent")),
        "{out}"
    );
    let queue = keys.queue("cpu");
    let queued = |r: Arc<RedisBackend>, q: String| async move {
        r.read_after(&q, None, 10)
            .await
            .unwrap()
            .unwrap_or_default()
    };
    assert!(queued(redis_client.clone(), queue.clone()).await.is_empty());

    // Redriven: a new request for the same node and input, signed for cpu,
    // on cpu's queue; the dead letter gone.
    let (code, out, err) = plugin(
        &kubeconfig,
        &["dlq", "redrive", PIPELINE, "--id", &letter_id],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("{letter_id}\tsent\t/v1/echo/requests/")),
        "{out}"
    );
    let sent = queued(redis_client.clone(), queue.clone()).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let verifier = Verifier::new(
        ring.clone(),
        None,
        keys.clone(),
        Duration::from_secs(5),
        1 << 20,
        Rejections::default(),
    );
    let env = verifier
        .verify_dead_letter(&sent[0].1, &["cpu"])
        .expect("signed with cpu's request key");
    assert_eq!(
        (env.node.as_deref(), env.rid.as_str(), &env.payload),
        (Some("b"), "order-7", &json!({"n": 7}))
    );
    assert!(env
        .reply_to
        .as_deref()
        .is_some_and(|r| r.starts_with("async:")));
    // Waiting on cpu's queue now, and one dead letter fewer.
    let queues = h
        .wait_pipeline(
            NS,
            PIPELINE,
            "status.queues after the redrive",
            PATIENCE,
            |v| {
                v["status"]["queues"]["deadLetters"] == 1
                    && v["status"]["queues"]["groups"][0]["waiting"] == 1
            },
        )
        .await?;
    assert_eq!(queues["status"]["queues"]["groups"][0]["name"], "cpu");
    let left = queued(redis_client.clone(), keys.dead_letter()).await;
    assert_eq!(
        left.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        [forged_id.as_str()]
    );
    // The record: an event on the pipeline.
    let events = h.events(NS, PIPELINE, "DeadLettersRedriven");
    assert!(
        events
            .iter()
            .any(|e| e["note"].as_str().unwrap_or("").contains("1 sent")),
        "{events:#?}"
    );

    // A forged letter is never sent: left, and the action says why.
    let (code, out, _) = plugin(
        &kubeconfig,
        &["dlq", "redrive", PIPELINE, "--id", &forged_id],
    )
    .await;
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("{forged_id}\tleft\t")), "{out}");
    assert_eq!(queued(redis_client.clone(), queue.clone()).await.len(), 1);

    // An action the operator finds Running but did not take (its operator
    // stopped midway) is failed, not carried out: the letter stays.
    let actions: Api<DynamicObject> = Api::namespaced_with(
        h.admin.clone(),
        NS,
        &ApiResource::erase::<sluice_crds::dead_letter_action::DeadLetterAction>(&()),
    );
    op.kill().await;
    let stolen: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterAction",
        "metadata": {"name": "half-done"},
        "spec": {"pipeline": PIPELINE, "action": "Purge", "all": true},
    }))?;
    actions.create(&PostParams::default(), &stolen).await?;
    actions
        .patch_status(
            "half-done",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await?;
    let _op = Operator::start(&h, "op", &["--queues-interval", "1s"]).await?;
    let failed = eventually("half-done failed", PATIENCE, || async {
        let o = actions.get("half-done").await.ok()?;
        (o.data["status"]["phase"] == "Failed").then_some(o)
    })
    .await?;
    let message = failed.data["status"]["message"].as_str().unwrap_or("");
    assert!(message.starts_with("interrupted"), "{message}");
    assert_eq!(
        queued(redis_client.clone(), keys.dead_letter()).await.len(),
        1
    );

    // Purged.
    let (code, out, err) = plugin(&kubeconfig, &["dlq", "purge", PIPELINE, "--all"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "deleted 1 dead letter(s)\n");
    assert!(queued(redis_client.clone(), keys.dead_letter())
        .await
        .is_empty());

    // Refusals, with the reason: an id that is not there, an id that is
    // not one (before anything is written), a memory pipeline.
    let (code, _, err) = plugin(&kubeconfig, &["dlq", "purge", PIPELINE, "--id", &letter_id]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not in the dead-letter stream"), "{err}");
    let (code, _, err) = plugin(&kubeconfig, &["dlq", "purge", PIPELINE, "--id", "x"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("spec.ids[0]"), "{err}");
    let (code, _, err) = plugin(&kubeconfig, &["dlq", "list", "orders"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("runs on memory backends"), "{err}");
    let (code, _, err) = plugin(&kubeconfig, &["dlq", "list", "absent"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("StreamPipeline oncall/absent not found"),
        "{err}"
    );

    // Everything the user asked was allowed, and it asked for no Secret.
    let (asked, denied) = authz_of(&h, &format!("system:serviceaccount:{NS}:oncall"));
    assert!(asked > 0);
    assert!(denied.is_empty(), "{denied:#?}");
    // And the operator was allowed everything it asked.
    let (_, denied) = authz_of(&h, &operator_user("op"));
    assert!(denied.is_empty(), "{denied:#?}");
    Ok(())
}

/// The queue observer writes `status.queues` when the reading changes, not
/// at every reading: an idle pipeline read every second keeps the reading
/// it settled on (its `readAt` stays), and a dead letter that appears is
/// written at the next reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_reading_of_the_queues_is_not_written_again() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.namespace(NS)?;
    let redis = external_redis(&h).await?;
    let _op = Operator::start(&h, "op", &["--queues-interval", "1s"]).await?;
    h.apply(NS, manifest()).await?;
    h.wait_ready(NS, PIPELINE, PATIENCE).await?;

    // The first reading has no rate, the second one of 0.0: from there on
    // nothing changes.
    let settled = h
        .wait_pipeline(NS, PIPELINE, "status.queues with a rate", PATIENCE, |v| {
            v["status"]["queues"]["groups"][0]["perSecond"] == "0.0"
        })
        .await?;
    let read_at = settled["status"]["queues"]["readAt"].clone();
    assert!(read_at.is_string(), "{settled:#}");
    // Four readings more; `readAt` has whole seconds, so any of them
    // written would show.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let idle = h.pipeline(NS, PIPELINE).expect("the pipeline");
    assert_eq!(
        idle["status"]["queues"]["readAt"], read_at,
        "{:#}",
        idle["status"]
    );

    // A change is written.
    let keys = Keys::new(NS, PIPELINE);
    let redis_client = RedisBackend::connect(RedisConfig::from_url(&redis.url())?).await?;
    let signer = Signer::new(ring(&h).await?, &keys, "web");
    redis_client
        .push(&keys.dead_letter(), request(&signer, "r-1", json!({})))
        .await?;
    let changed = h
        .wait_pipeline(
            NS,
            PIPELINE,
            "status.queues with a dead letter",
            PATIENCE,
            |v| v["status"]["queues"]["deadLetters"] == 1,
        )
        .await?;
    assert_ne!(changed["status"]["queues"]["readAt"], read_at);
    Ok(())
}

/// An action is acted on once: its spec cannot change after creation (the
/// API server refuses it), and one found Running that no operator carries
/// out (its operator stopped midway) is failed, not done again.
#[tokio::test]
async fn an_action_is_immutable_and_an_interrupted_one_is_not_redone() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.namespace(NS)?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        h.admin.clone(),
        NS,
        &ApiResource::erase::<sluice_crds::dead_letter_action::DeadLetterAction>(&()),
    );
    let action = |name: &str| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "DeadLetterAction",
            "metadata": {"name": name},
            "spec": {"pipeline": "p", "action": "Purge", "all": true},
        }))?)
    };
    api.create(&PostParams::default(), &action("a1")?).await?;
    let changed = api
        .patch(
            "a1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"all": false, "ids": ["1-0"]}})),
        )
        .await;
    let e = changed.expect_err("a changed spec is refused");
    assert!(e.to_string().contains("spec is immutable"), "{e}");
    // Schema bounds: an id that is not one is refused at admission.
    let mut bad = action("a2")?;
    bad.data["spec"] = json!({"pipeline": "p", "action": "Purge", "ids": ["1-0; DEL x"]});
    assert!(api.create(&PostParams::default(), &bad).await.is_err());

    // Taking an action is a status patch carrying the resourceVersion it
    // was read at: a second taker, with the version before the first
    // took it, is refused (409), as the API server refuses it.
    let read = api.get("a1").await?;
    let take = json!({
        "metadata": {"resourceVersion": read.metadata.resource_version},
        "status": {"phase": "Succeeded"},
    });
    api.patch_status("a1", &PatchParams::default(), &Patch::Merge(&take))
        .await?;
    let again = api
        .patch_status("a1", &PatchParams::default(), &Patch::Merge(&take))
        .await;
    assert!(
        matches!(&again, Err(kube::Error::Api(e)) if e.code == 409),
        "{again:?}"
    );
    api.patch_status(
        "a1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": null})),
    )
    .await?;

    // Running before any operator ran: interrupted.
    api.create(&PostParams::default(), &action("a3")?).await?;
    api.patch_status(
        "a3",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await?;
    let _op = Operator::start(&h, "op", &[]).await?;
    let failed = eventually("a3 failed", PATIENCE, || async {
        let o = api.get("a3").await.ok()?;
        (o.data["status"]["phase"] == "Failed").then_some(o)
    })
    .await?;
    let message = failed.data["status"]["message"].as_str().unwrap_or("");
    assert!(message.starts_with("interrupted"), "{message}");
    // a1 names a pipeline that does not exist: failed, with the reason.
    let a1 = eventually("a1 failed", PATIENCE, || async {
        let o = api.get("a1").await.ok()?;
        (o.data["status"]["phase"] == "Failed").then_some(o)
    })
    .await?;
    let message = a1.data["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("StreamPipeline p does not exist"),
        "{message}"
    );
    assert_eq!(h.events(NS, "a1", "DeadLetterActionFailed").len(), 1);
    Ok(())
}

/// With managed Redis the operator connects as `admin`, over TLS, trusting
/// the CA in `P-redis` (the stand-in cannot reach the Service; what that
/// user may do on a real `redis-server` is `redis_users.rs`).
#[tokio::test]
async fn with_managed_redis_the_action_connects_as_admin_with_its_ca() -> anyhow::Result<()> {
    use sluice_operator::redis_target::Target;
    use sluice_operator::render::redis_acl::Role;

    let h = Harness::start().await?;
    h.namespace(NS)?;
    let _op = Operator::start(&h, "op", &[]).await?;
    h.apply(NS, example("orders-redis")).await?;
    h.wait_ready(NS, "orders-redis", PATIENCE).await?;
    let sp: sluice_crds::StreamPipeline =
        serde_json::from_value(h.pipeline(NS, "orders-redis").expect("stored"))?;
    let t = Target::read(&h.admin, &sp, Role::Admin)
        .await
        .map_err(anyhow::Error::msg)?;
    let secrets: Api<Secret> = Api::namespaced(h.admin.clone(), NS);
    let data = secrets.get("orders-redis-redis").await?.data.unwrap();
    let password = String::from_utf8(data["admin.password"].0.clone())?;
    assert_eq!(
        t.url,
        format!("rediss://admin:{password}@orders-redis-redis.{NS}.svc:6379")
    );
    let ca = t.ca.expect("the CA of P-redis");
    assert_eq!(ca.pem, data["ca.crt"].0);
    Ok(())
}

//! A worker's hand-off on a real Redis: a batch is one `MULTI` … `EXEC`
//! that stays whole among other commands on the same connection, a
//! refusal applies nothing, and a failure as it runs is said to have
//! applied in part.
//!
//! Every test starts its own `redis-server` on a free loopback port.

use std::time::Duration;

use sluice_platform::conformance::entry;
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::{BackendError, Completion, Queue};

mod common;
use common::{backend, backend_as, cli, one_connection, prefix};

#[tokio::test]
async fn a_batch_of_hand_offs_is_one_transaction_with_one_xack_and_one_xdel() {
    let server = RedisServer::start(false);
    let b = backend(&server).await;
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    b.ensure_group(&q).await.unwrap();
    for i in 0..8 {
        b.push(&q, entry(i)).await.unwrap();
    }
    let ds = b.read(&q, "w", 8, Duration::ZERO).await.unwrap();
    let done = forwards(&ds, &next);
    cli(&server, &["CONFIG", "RESETSTAT"]);
    assert_eq!(b.complete_all(&q, &done).await.unwrap(), vec![true; 8]);
    let stats = cli(&server, &["INFO", "commandstats"]);
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        (
            calls("multi"),
            calls("xadd"),
            calls("xack"),
            calls("xdel"),
            calls("exec")
        ),
        (1, 8, 1, 1, 1),
        "{stats}"
    );
    assert_eq!(b.depth(&q).await.unwrap().entries, 0);
    assert_eq!(b.depth(&next).await.unwrap().entries, 8);
}

/// The hand-offs of the entries `ds`, each forwarded to `next`.
fn forwards(ds: &[sluice_platform::Delivery], next: &str) -> Vec<Completion> {
    ds.iter()
        .map(|d| Completion {
            id: d.id.clone(),
            forward: Some(sluice_platform::Forward {
                stream: next.to_string(),
                entry: d.entry.clone(),
                must_exist: false,
                copy_to: None,
            }),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_stay_whole_among_other_commands_on_the_same_connections() {
    let server = RedisServer::start(false);
    // One pooled connection: every transaction shares it with the pushes.
    let b = one_connection(&server.url()).await;
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    let other = format!("{p}:q:other");
    b.ensure_group(&q).await.unwrap();
    for i in 0..200 {
        b.push(&q, entry(i)).await.unwrap();
    }
    let ds = b.read(&q, "w", 200, Duration::ZERO).await.unwrap();
    assert_eq!(ds.len(), 200);
    cli(&server, &["CONFIG", "RESETSTAT"]);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in ds.chunks(4) {
        let (hb, hq, done) = (b.clone(), q.clone(), forwards(chunk, &next));
        tasks.spawn(async move { hb.complete_all(&hq, &done).await.map(|r| r.len()) });
        for _ in 0..3 {
            let (pb, other) = (b.clone(), other.clone());
            tasks.spawn(async move {
                // An entry id, not `QUEUED`: the push was not caught
                // inside another caller's MULTI.
                let id = pb.push(&other, entry(0)).await?;
                assert!(
                    id.split_once('-')
                        .is_some_and(|(ms, _)| ms.parse::<u64>().is_ok()),
                    "{id}"
                );
                Ok(0)
            });
        }
    }
    let mut handed = 0;
    while let Some(r) = tasks.join_next().await {
        handed += r.unwrap().unwrap();
    }
    assert_eq!(handed, 200);
    assert_eq!(
        b.depth(&q).await.unwrap().entries,
        0,
        "every entry acked and deleted"
    );
    assert_eq!(b.depth(&next).await.unwrap().entries, 200);
    assert_eq!(b.depth(&other).await.unwrap().entries, 150);
    let stats = cli(&server, &["INFO", "commandstats"]);
    let errors = cli(&server, &["INFO", "errorstats"]);
    assert!(
        stats.contains("cmdstat_exec:calls=50,") && stats.contains("cmdstat_multi:calls=50,"),
        "{stats}"
    );
    assert!(
        !errors.contains("errorstat_"),
        "no command failed: {errors}"
    );
}

#[tokio::test]
async fn a_hand_off_refused_while_queued_applies_nothing() {
    let server = RedisServer::start(false);
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    // A worker whose user may not write `next`; one pooled connection, so
    // the pushes after the refusal use the same one.
    let b = backend_as(&server, &[&format!("~{q}"), "+@all"]).await;
    b.ensure_group(&q).await.unwrap();
    b.push(&q, entry(1)).await.unwrap();
    let ds = b.read(&q, "w", 1, Duration::ZERO).await.unwrap();
    let err = b.complete_all(&q, &forwards(&ds, &next)).await.unwrap_err();
    assert!(matches!(err, BackendError::NotApplied(_)), "{err:?}");
    assert!(
        err.to_string().contains("NOPERM"),
        "the refusal is named: {err}"
    );
    // Not acknowledged, not deleted: it waits for a reclaim.
    assert_eq!(b.depth(&q).await.unwrap().entries, 1);
    assert_eq!(b.pending(&q).await.unwrap(), 1);
    // The connection is usable, not left inside MULTI.
    let id = b.push(&q, entry(2)).await.unwrap();
    assert!(id.contains('-'), "an entry id, not QUEUED: {id}");
    assert_eq!(b.depth(&q).await.unwrap().entries, 2);
    let errors = cli(&server, &["INFO", "errorstats"]);
    // The refusal and the aborted EXEC, and no `ERR` (an EXEC without
    // MULTI, or a nested MULTI).
    assert!(
        errors.contains("errorstat_NOPERM:count=1")
            && errors.contains("errorstat_EXECABORT:count=1")
            && !errors.contains("errorstat_ERR"),
        "{errors}"
    );
}

#[tokio::test]
async fn a_hand_off_whose_multi_is_refused_is_judged_by_what_ran_on_its_own() {
    let server = RedisServer::start(false);
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    let broken = format!("{p}:q:broken");
    cli(&server, &["SET", &broken, "not a stream"]);
    // A user that may do everything but open a transaction: the commands
    // after the refused MULTI run on their own.
    let b = backend_as(&server, &["~*", "+@all", "-multi"]).await;
    b.ensure_group(&q).await.unwrap();
    b.push(&q, entry(1)).await.unwrap();
    let ds = b.read(&q, "w", 1, Duration::ZERO).await.unwrap();
    // Every command succeeded: applied, if not as one step.
    assert_eq!(
        b.complete_all(&q, &forwards(&ds, &next)).await,
        Ok(vec![true])
    );
    assert_eq!(b.depth(&next).await.unwrap().entries, 1);
    assert_eq!(b.depth(&q).await.unwrap().entries, 0);
    // One failed on its own while the acknowledgement ran: the caller must
    // keep the entry, not wait for a redelivery.
    b.push(&q, entry(2)).await.unwrap();
    let ds = b.read(&q, "w", 1, Duration::ZERO).await.unwrap();
    let err = b
        .complete_all(&q, &forwards(&ds, &broken))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::PartlyApplied(_)), "{err:?}");
    assert!(
        err.to_string().contains("MULTI refused") && err.to_string().contains("WRONGTYPE"),
        "{err}"
    );
    assert_eq!(b.pending(&q).await.unwrap(), 0);
}

#[tokio::test]
async fn a_hand_off_whose_forward_fails_inside_exec_is_said_to_have_applied_in_part() {
    let server = RedisServer::start(false);
    // Without the reads a managed worker user lacks: the read-back uses
    // what it has.
    let b = backend_as(&server, &["~*", "+@all", "-xrange", "-xrevrange", "-xread"]).await;
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    let fine = format!("{p}:q:fine");
    // The next step's key holds a string: its XADD fails inside EXEC, and
    // Redis runs the rest (XACK, XDEL) all the same.
    cli(&server, &["SET", &next, "not a stream"]);
    b.ensure_group(&q).await.unwrap();
    b.push(&q, entry(1)).await.unwrap();
    b.push(&q, entry(2)).await.unwrap();
    let ds = b.read(&q, "w", 2, Duration::ZERO).await.unwrap();
    let mut done = forwards(&ds[..1], &next);
    done.extend(forwards(&ds[1..], &fine));
    let err = b.complete_all(&q, &done).await.unwrap_err();
    assert!(matches!(err, BackendError::PartlyApplied(_)), "{err:?}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // Gone from the queue, nothing pending: nothing would redeliver them.
    assert_eq!(b.depth(&q).await.unwrap().entries, 0);
    assert_eq!(b.pending(&q).await.unwrap(), 0);
    assert_eq!(b.depth(&fine).await.unwrap().entries, 1);
}

#[tokio::test]
async fn a_hand_off_refused_as_a_whole_at_exec_applied_nothing() {
    let server = RedisServer::start(false);
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    // A user that may queue the commands but not run EXEC: Redis refuses
    // EXEC itself, and the transaction is discarded.
    let b = backend_as(&server, &["~*", "+@all", "-exec"]).await;
    b.ensure_group(&q).await.unwrap();
    b.push(&q, entry(1)).await.unwrap();
    let ds = b.read(&q, "w", 1, Duration::ZERO).await.unwrap();
    let err = b.complete_all(&q, &forwards(&ds, &next)).await.unwrap_err();
    assert!(matches!(err, BackendError::NotApplied(_)), "{err:?}");
    assert_eq!(b.depth(&q).await.unwrap().entries, 1);
    assert_eq!(b.pending(&q).await.unwrap(), 1);
    assert_eq!(b.depth(&next).await.unwrap().entries, 0);
}

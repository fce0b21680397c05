//! A worker's hand-off on a real Redis, both ways it is sent: one call of
//! sluice's function (`FCALL sluice_1_hand_off`, the library loaded by the
//! first process whose user may), or one `MULTI` … `EXEC` where functions
//! cannot be called. Either applies a batch whole, says what a failure
//! applied, and refuses as a whole what the caller may not do.
//!
//! Every test starts its own `redis-server` on a free loopback port.

use std::sync::Arc;
use std::time::Duration;

use sluice_platform::conformance::entry;
use sluice_platform::redis::testing::RedisServer;
use sluice_platform::{
    BackendError, Completion, Delivery, Forward, Queue, RedisBackend, RedisConfig, FUNCTION_LIBRARY,
};

mod common;
use common::{backend_as, calls, cli, one_connection, prefix, rejected};

/// The ACL rules of a user who may not call functions: its hand-offs use
/// `MULTI` … `EXEC`.
const NO_FCALL: &str = "-fcall";

/// The two ways a hand-off is sent, as the extra ACL rules that choose it.
const PATHS: [(&str, &[&str]); 2] = [("function", &[]), ("transaction", &[NO_FCALL])];

async fn backend(server: &RedisServer) -> Arc<RedisBackend> {
    let cfg = RedisConfig::from_url(&server.url()).expect("test URL parses");
    RedisBackend::connect(cfg)
        .await
        .expect("connects to the test server")
}

/// The hand-offs of the entries `ds`, each forwarded to `next`.
fn forwards(ds: &[Delivery], next: &str) -> Vec<Completion> {
    ds.iter()
        .map(|d| Completion {
            id: d.id.clone(),
            forward: Some(Forward {
                stream: next.to_string(),
                entry: d.entry.clone(),
                must_exist: false,
                copy_to: None,
            }),
        })
        .collect()
}

/// `n` entries pushed to `q` and read by consumer `w`.
async fn delivered(b: &RedisBackend, q: &str, n: usize) -> Vec<Delivery> {
    b.ensure_group(q).await.unwrap();
    for i in 0..n {
        b.push(q, entry(i)).await.unwrap();
    }
    let ds = b.read(q, "w", n, Duration::ZERO).await.unwrap();
    assert_eq!(ds.len(), n);
    ds
}

fn library_loaded(server: &RedisServer) -> bool {
    cli(server, &["FUNCTION", "LIST", "LIBRARYNAME", "sluice_1"]).contains("sluice_1_hand_off")
}

#[tokio::test]
async fn a_batch_of_hand_offs_is_one_function_call_and_the_first_loads_the_library() {
    let server = RedisServer::start(false);
    let b = backend(&server).await;
    let p = prefix();
    let (q, next) = (format!("{p}:q:w"), format!("{p}:q:next"));
    assert!(!library_loaded(&server));
    let ds = delivered(&b, &q, 16).await;
    assert_eq!(
        b.complete_all(&q, &forwards(&ds[..8], &next)).await,
        Ok(vec![true; 8])
    );
    assert!(library_loaded(&server), "loaded by the first hand-off");
    cli(&server, &["CONFIG", "RESETSTAT"]);
    assert_eq!(
        b.complete_all(&q, &forwards(&ds[8..], &next)).await,
        Ok(vec![true; 8])
    );
    let ran = |c| calls(&server, c);
    assert_eq!(
        (
            ran("fcall"),
            ran("xadd"),
            ran("xack"),
            ran("xdel"),
            ran("multi"),
            ran("exec")
        ),
        (1, 8, 1, 1, 0, 0)
    );
    assert_eq!(b.depth(&q).await.unwrap().entries, 0);
    assert_eq!(b.pending(&q).await.unwrap(), 0);
    assert_eq!(b.depth(&next).await.unwrap().entries, 16);
}

#[tokio::test]
async fn where_functions_cannot_be_called_a_batch_is_one_transaction() {
    let server = RedisServer::start(false);
    let p = prefix();
    let (q, next) = (format!("{p}:q:w"), format!("{p}:q:next"));
    // A user that may not call functions, and one that may call but not
    // load them while no one has loaded the library.
    for rules in [
        &["~*", "+@all", NO_FCALL][..],
        &["~*", "+@all", "-function"],
    ] {
        let b = backend_as(&server, rules).await;
        let ds = delivered(&b, &q, 16).await;
        cli(&server, &["CONFIG", "RESETSTAT"]);
        assert_eq!(
            b.complete_all(&q, &forwards(&ds[..8], &next)).await,
            Ok(vec![true; 8]),
            "{rules:?}"
        );
        let ran = |c| calls(&server, c);
        assert_eq!(
            (
                ran("multi"),
                ran("xadd"),
                ran("xack"),
                ran("xdel"),
                ran("exec")
            ),
            (1, 8, 1, 1, 1),
            "{rules:?}"
        );
        // Not tried again at once: the next batch goes straight to MULTI.
        let tried = rejected(&server, "fcall") + calls(&server, "fcall");
        assert_eq!(tried, 1, "{rules:?}");
        b.complete_all(&q, &forwards(&ds[8..], &next))
            .await
            .unwrap();
        assert_eq!(rejected(&server, "fcall") + calls(&server, "fcall"), 1);
        assert_eq!(calls(&server, "exec"), 2);
        assert!(!library_loaded(&server));
        assert_eq!(b.pending(&q).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_library_lost_with_a_restart_is_loaded_again_by_the_next_hand_off() {
    let server = RedisServer::start(false);
    let b = backend(&server).await;
    let p = prefix();
    let (q, next) = (format!("{p}:q:w"), format!("{p}:q:next"));
    let ds = delivered(&b, &q, 2).await;
    b.complete_all(&q, &forwards(&ds[..1], &next))
        .await
        .unwrap();
    cli(&server, &["FUNCTION", "FLUSH"]);
    assert!(!library_loaded(&server));
    assert_eq!(
        b.complete_all(&q, &forwards(&ds[1..], &next)).await,
        Ok(vec![true])
    );
    assert!(library_loaded(&server));
    assert_eq!(b.depth(&next).await.unwrap().entries, 2);
    assert_eq!(b.pending(&q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_stay_whole_among_other_commands_on_the_same_connections() {
    let server = RedisServer::start(false);
    // One pooled connection: every transaction shares it with the pushes.
    let b = backend_as(&server, &["~*", "+@all", NO_FCALL]).await;
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    let other = format!("{p}:q:other");
    let ds = delivered(&b, &q, 200).await;
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
    assert_eq!((calls(&server, "multi"), calls(&server, "exec")), (50, 50));
    // No error but the FCALLs refused before the first refusal turned the
    // library off (the hand-offs run at once).
    let errors = cli(&server, &["INFO", "errorstats"]);
    let refused = rejected(&server, "fcall");
    assert!(refused >= 1);
    assert_eq!(
        errors
            .trim()
            .lines()
            .skip(1)
            .map(str::trim)
            .collect::<Vec<_>>(),
        [format!("errorstat_NOPERM:count={refused}")],
        "no hand-off command failed: {errors}"
    );
}

#[tokio::test]
async fn a_hand_off_refused_for_one_of_its_commands_applies_nothing() {
    for (path, extra) in PATHS {
        let server = RedisServer::start(false);
        cli(&server, &["FUNCTION", "LOAD", FUNCTION_LIBRARY]);
        let p = prefix();
        let q = format!("{p}:q:w");
        let next = format!("{p}:q:next");
        // A worker whose user may not write `next`; one pooled connection, so
        // the pushes after the refusal use the same one.
        let mut rules = vec![format!("~{q}"), "+@all".to_string()];
        rules.extend(extra.iter().map(|r| r.to_string()));
        let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
        let b = backend_as(&server, &rules).await;
        let ds = delivered(&b, &q, 1).await;
        let err = b.complete_all(&q, &forwards(&ds, &next)).await.unwrap_err();
        assert!(
            matches!(err, BackendError::NotApplied(_)),
            "{path}: {err:?}"
        );
        assert!(
            err.to_string().contains("NOPERM"),
            "{path}: the refusal is named: {err}"
        );
        // Not acknowledged, not deleted: it waits for a reclaim.
        assert_eq!(b.depth(&q).await.unwrap().entries, 1, "{path}");
        assert_eq!(b.pending(&q).await.unwrap(), 1, "{path}");
        assert_eq!(cli(&server, &["EXISTS", &next]).trim(), "0", "{path}");
        // The connection is usable, not left inside MULTI.
        let id = b.push(&q, entry(2)).await.unwrap();
        assert!(id.contains('-'), "{path}: an entry id, not QUEUED: {id}");
        assert_eq!(b.depth(&q).await.unwrap().entries, 2, "{path}");
        let errors = cli(&server, &["INFO", "errorstats"]);
        // The refusal and no `ERR` (an EXEC without MULTI, a nested MULTI,
        // a malformed call of the function).
        assert!(
            errors.contains("errorstat_EXECABORT:count=1") && !errors.contains("errorstat_ERR"),
            "{path}: {errors}"
        );
    }
}

#[tokio::test]
async fn a_hand_off_whose_multi_is_refused_is_judged_by_what_ran_on_its_own() {
    let server = RedisServer::start(false);
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    let broken = format!("{p}:q:broken");
    cli(&server, &["SET", &broken, "not a stream"]);
    // A user that may do everything but open a transaction or call a
    // function: the commands after the refused MULTI run on their own.
    let b = backend_as(&server, &["~*", "+@all", "-multi", NO_FCALL]).await;
    let ds = delivered(&b, &q, 1).await;
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
async fn a_hand_off_whose_forward_fails_as_it_runs_is_said_to_have_applied_in_part() {
    for (path, extra) in PATHS {
        let server = RedisServer::start(false);
        // Without the reads a managed worker user lacks: the read-back uses
        // what it has.
        let mut rules = vec!["~*", "+@all", "-xrange", "-xrevrange", "-xread"];
        rules.extend_from_slice(extra);
        let b = backend_as(&server, &rules).await;
        let p = prefix();
        let q = format!("{p}:q:w");
        let next = format!("{p}:q:next");
        let fine = format!("{p}:q:fine");
        // The next step's key holds a string: its XADD fails as it runs,
        // and the rest (XACK, XDEL) run all the same, inside EXEC as inside
        // the function.
        cli(&server, &["SET", &next, "not a stream"]);
        let ds = delivered(&b, &q, 2).await;
        let mut done = forwards(&ds[..1], &next);
        done.extend(forwards(&ds[1..], &fine));
        let err = b.complete_all(&q, &done).await.unwrap_err();
        assert!(
            matches!(err, BackendError::PartlyApplied(_)),
            "{path}: {err:?}"
        );
        assert!(err.to_string().contains("WRONGTYPE"), "{path}: {err}");
        // Gone from the queue, nothing pending: nothing would redeliver them.
        assert_eq!(b.depth(&q).await.unwrap().entries, 0, "{path}");
        assert_eq!(b.pending(&q).await.unwrap(), 0, "{path}");
        assert_eq!(b.depth(&fine).await.unwrap().entries, 1, "{path}");
    }
}

#[tokio::test]
async fn a_hand_off_refused_as_a_whole_at_exec_applied_nothing() {
    let server = RedisServer::start(false);
    let p = prefix();
    let q = format!("{p}:q:w");
    let next = format!("{p}:q:next");
    // A user that may queue the commands but not run EXEC: Redis refuses
    // EXEC itself, and the transaction is discarded.
    let b = backend_as(&server, &["~*", "+@all", "-exec", NO_FCALL]).await;
    let ds = delivered(&b, &q, 1).await;
    let err = b.complete_all(&q, &forwards(&ds, &next)).await.unwrap_err();
    assert!(matches!(err, BackendError::NotApplied(_)), "{err:?}");
    assert_eq!(b.depth(&q).await.unwrap().entries, 1);
    assert_eq!(b.pending(&q).await.unwrap(), 1);
    assert_eq!(b.depth(&next).await.unwrap().entries, 0);
}

#[tokio::test]
async fn a_malformed_call_of_the_function_runs_nothing() {
    let server = RedisServer::start(false);
    cli(&server, &["FUNCTION", "LOAD", FUNCTION_LIBRARY]);
    let b = one_connection(&server.url()).await;
    let p = prefix();
    let (q, next) = (format!("{p}:q:w"), format!("{p}:q:next"));
    let ds = delivered(&b, &q, 1).await;
    let id = ds[0].id.as_str();
    let calls_of_hostile_callers: [&[&str]; 6] = [
        // More ids said than given.
        &["1", &q, "sluice", "5", id],
        // No ids, or not a number.
        &["1", &q, "sluice", "0"],
        &["1", &q, "sluice", "x", id],
        // Two keys, or none.
        &["2", &q, &next, "sluice", "1", id],
        &["0", "sluice", "1", id],
        // An XADD whose count runs past the arguments (a loop of a billion
        // steps, were it believed).
        &[
            "1",
            &q,
            "sluice",
            "1",
            id,
            &next,
            "1000000000",
            "*",
            "f",
            "v",
        ],
    ];
    for args in calls_of_hostile_callers {
        let mut call = vec!["FCALL", "sluice_1_hand_off"];
        call.extend_from_slice(args);
        let answer = cli(&server, &call);
        assert!(
            answer.starts_with("ERR sluice_1_hand_off"),
            "{args:?}: {answer}"
        );
        assert_eq!(b.pending(&q).await.unwrap(), 1, "{args:?}");
        assert_eq!(b.depth(&q).await.unwrap().entries, 1, "{args:?}");
        assert_eq!(cli(&server, &["EXISTS", &next]).trim(), "0", "{args:?}");
    }
}

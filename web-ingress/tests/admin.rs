//! The admin listener (`--admin`) of the memory profile: a request whose
//! node keeps failing is dead-lettered, listed, the node's upstream comes
//! back, the letter is redriven and its answer fetched from the public
//! listener; bad requests are refused and the endpoints are not on the
//! public listener.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::NodeFuture;
use common::{client, eventually, json_response, url};
use serde_json::{json, Value};
use sluice_exec_worker::{Node, NodeContext, NodeError, NodeOutput};
use std::time::Duration;

/// `rust/upstream`: fails retryably while its upstream is down, echoes once
/// it is up.
struct Upstream {
    up: Arc<AtomicBool>,
}

impl Node for Upstream {
    fn call<'s, 'c, 'f>(&'s self, input: Value, _ctx: &'c NodeContext) -> NodeFuture<'f>
    where
        's: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            if self.up.load(Ordering::SeqCst) {
                Ok(NodeOutput::value(input))
            } else {
                Err(NodeError::Retryable("upstream is down".into()))
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_redriven_once_its_upstream_is_back_and_answered() {
    let up = Arc::new(AtomicBool::new(false));
    let nodes = {
        let up = up.clone();
        common::registry_with("rust/upstream", move || Upstream { up: up.clone() })
    };
    let admin_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "an old token").unwrap();
    let mut config = common::config(&common::pipeline("letters.yaml"));
    config.admin = Some((([127, 0, 0, 1], admin_port).into(), token_file.clone()));
    let ingress = sluice_web_ingress::start_with(config, nodes)
        .await
        .expect("the ingress starts");
    let public = ingress.local_addr();
    // A fresh token, readable by its owner only.
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(token.len(), 64, "{token}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let admin = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");
    let http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Without the token, or with another, nothing.
    let anonymous = client();
    for (path, get) in [("/dlq", true), ("/dlq/purge", false)] {
        for auth in [None, Some("Bearer an old token"), Some(token.as_str())] {
            let req = if get {
                anonymous.get(admin(path))
            } else {
                anonymous.post(admin(path)).body(r#"{"all": true}"#)
            };
            let req = match auth {
                Some(a) => req.header("authorization", a),
                None => req,
            };
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {auth:?}");
        }
    }

    let input = json!({"order": "P-1"});
    let resp = http
        .post(url(public, "/v1/call"))
        .header("x-request-id", "poison-1")
        .json(&input)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_response(resp).await;
    assert_eq!(status, 502, "{body}");

    let listing = http.get(admin("/dlq?payloads=true")).send().await.unwrap();
    assert_eq!(listing.status(), 200);
    let listing = listing.text().await.unwrap();
    let row: Vec<&str> = listing.lines().nth(1).expect("a row").split('\t').collect();
    assert_eq!(&row[2..5], ["work", "call", "poison-1"], "{listing}");
    assert_eq!(row[6], "2", "{listing}");
    assert!(row[7].starts_with("retries_exhausted: "), "{listing}");
    assert!(listing.contains(&format!("  {input}")), "{listing}");

    // Refused, nothing done.
    for (path, body, why) in [
        ("/dlq/redrive", json!({}), "name the dead letters"),
        (
            "/dlq/redrive",
            json!({"all": true, "ids": ["1-1"]}),
            "name the dead letters",
        ),
        ("/dlq/redrive", json!({"ids": ["x"]}), "not an entry id"),
        (
            "/dlq/redrive",
            json!({"ids": ["0-999"]}),
            "not in the dead-letter stream",
        ),
        (
            "/dlq/redrive",
            json!({"all": true, "interface": "nope"}),
            "no such http interface",
        ),
        (
            "/dlq/purge",
            json!({"all": true, "extra": 1}),
            "unknown field",
        ),
    ] {
        let r = http.post(admin(path)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path} {body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(why), "{path} {body}: {text}");
    }
    let r = http.get(admin("/dlq?limit=x")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A body over 64 KiB: refused with the token; without it, the token is
    // checked before anything of the body is read.
    let big = format!(r#"{{"ids": ["{}"]}}"#, "1".repeat(70 << 10));
    let r = http
        .post(admin("/dlq/purge"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = anonymous
        .post(admin("/dlq/purge"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Not on the public listener.
    let r = http.get(url(public, "/dlq")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    up.store(true, Ordering::SeqCst);
    let r = http
        .post(admin("/dlq/redrive"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = r.text().await.unwrap();
    let location = out
        .lines()
        .find_map(|l| l.split('\t').nth(2).filter(|_| l.contains("\tsent\t")))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let answer = eventually(Duration::from_secs(10), "the redriven answer", || async {
        let r = http.get(url(public, &location)).send().await.ok()?;
        if r.status() == 200 {
            r.json::<Value>().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_eq!(answer, input);
    let after = http
        .get(admin("/dlq"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(after.contains("(no dead letters)"), "{after}");
    common::stop(ingress).await;
}

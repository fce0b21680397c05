//! `sluice-web-ingress dlq … --admin ADDR`: the dead-letter commands sent to
//! the admin listener of a running ingress ([`crate::admin`]) whose dead
//! letters live in its process (memory and tcp backends). It reads the
//! token the ingress wrote, sends one request and prints the answer as the
//! Redis form of the command prints it; it signs nothing and holds no key.
//!
//! Only loopback addresses are accepted (the listener binds nothing else),
//! and the answer is read up to [`MAX_ANSWER`] (what the listener can say
//! at most): the process answering on that port may not be the ingress.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::dlq_command::{Act, ActError};

/// Largest answer read: a listing with payloads stops after the entry that
/// takes it past 4 MiB, and that entry may hold the largest payload a
/// pipeline allows (printed escaped: up to twice its bytes); a redrive of
/// 20,000 letters says a line of each.
pub const MAX_ANSWER: usize = crate::dead_letters::LIST_BYTES
    + 2 * sluice_crds::limits::MAX_PAYLOAD_BYTES as usize
    + (1 << 20);

/// How long connecting may take.
const CONNECT: Duration = Duration::from_secs(5);

/// How long the answer may take: an action runs for at most
/// [`crate::admin::DEADLINE`], and may wait for one before it.
const ANSWER: Duration = Duration::from_secs(2 * crate::admin::DEADLINE.as_secs() + 60);

/// Largest token file read (a token is 64 hex digits).
const MAX_TOKEN_FILE: u64 = 1024;

/// The token in `file`, read up to [`MAX_TOKEN_FILE`] bytes (a FIFO or a
/// device named by mistake is refused, not read forever).
fn read_token(file: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(file)
        .with_context(|| format!("reading the admin token in {}", file.display()))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        bail!(
            "{}: not a file (the ingress writes its admin token to one)",
            file.display()
        );
    }
    let mut text = String::new();
    f.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the admin token in {}", file.display()))?;
    if text.len() as u64 > MAX_TOKEN_FILE {
        bail!(
            "{}: not an admin token (over {MAX_TOKEN_FILE} bytes)",
            file.display()
        );
    }
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "{}: not an admin token (the ingress writes one at each start)",
            file.display()
        );
    }
    Ok(token.to_string())
}

/// `text` with control characters escaped line by line, tabs kept: the
/// process answering on the port may not be the ingress.
fn shown(text: &str) -> String {
    text.lines()
        .map(|l| {
            l.split('\t')
                .map(crate::dlq_command::printable)
                .collect::<Vec<_>>()
                .join("\t")
                + "\n"
        })
        .collect()
}

/// The request that asks the listener for `act`: method, path and query,
/// and a JSON body for the actions that change something.
fn request(act: &Act) -> (hyper::Method, String, Option<serde_json::Value>) {
    match act {
        Act::List { limit, payloads } => (
            hyper::Method::GET,
            format!("/dlq?limit={limit}&payloads={payloads}"),
            None,
        ),
        Act::Redrive {
            pick,
            interface,
            caller,
            follow_moved,
            dry_run,
        } => (
            hyper::Method::POST,
            "/dlq/redrive".into(),
            Some(json!({
                "ids": pick.ids,
                "all": pick.all,
                "interface": interface,
                "caller": caller,
                "followMoved": follow_moved,
                "dryRun": dry_run,
            })),
        ),
        Act::Purge { pick, dry_run } => (
            hyper::Method::POST,
            "/dlq/purge".into(),
            Some(json!({ "ids": pick.ids, "all": pick.all, "dryRun": dry_run })),
        ),
    }
}

/// Asks the admin listener at `at` to do `act`, with the token in
/// `token_file`: what it did, as text, or why not ([`ActError`], as
/// [`crate::dlq_command::act`] would have answered).
///
/// # Errors
/// Not a loopback address, the token unreadable, the listener unreachable
/// or answering what no ingress would.
pub async fn ask(
    at: SocketAddr,
    token_file: &Path,
    act: &Act,
) -> anyhow::Result<Result<String, ActError>> {
    if !at.ip().is_loopback() {
        bail!("--admin {at}: the admin listener is on a loopback address");
    }
    let token = read_token(token_file)?;
    let stream = tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect(at))
        .await
        .map_err(|_| anyhow::anyhow!("--admin {at}: no answer within {CONNECT:?}"))?
        .with_context(|| format!("--admin {at}: is an ingress with --admin running there?"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("--admin {at}"))?;
    let connection = tokio::spawn(connection);
    let (method, path, body) = request(act);
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, at.to_string())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .context("building the request")?;
    let exchange = async {
        let answer = sender
            .send_request(req)
            .await
            .with_context(|| format!("--admin {at}: the request failed"))?;
        let status = answer.status();
        let text = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("--admin {at}: reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok((status, text))
    };
    let answered = tokio::time::timeout(ANSWER, exchange).await;
    connection.abort();
    let (status, text) = answered.map_err(|_| {
        anyhow::anyhow!(
            "--admin {at}: no answer within {}s (an action stops after {}s; list to see where it stands)",
            ANSWER.as_secs(),
            crate::admin::DEADLINE.as_secs()
        )
    })??;
    let text = shown(&String::from_utf8_lossy(&text));
    Ok(match status {
        StatusCode::OK => Ok(text),
        StatusCode::BAD_REQUEST => Err(ActError::Refused(text.trim_end().to_string())),
        StatusCode::SERVICE_UNAVAILABLE => {
            // What was done, then the error on the last line.
            let body = text.trim_end_matches('\n');
            let (done, error) = body.rsplit_once('\n').map_or(("", body), |(d, e)| (d, e));
            Err(ActError::Stopped {
                done: if done.is_empty() {
                    String::new()
                } else {
                    format!("{done}\n")
                },
                error: error.to_string(),
            })
        }
        StatusCode::PAYLOAD_TOO_LARGE => Err(ActError::Refused(format!(
            "too many ids for one request to the admin listener (its body is at most {} KiB): name fewer",
            crate::admin::MAX_BODY >> 10
        ))),
        StatusCode::UNAUTHORIZED => bail!(
            "--admin {at}: the listener refused the token in {} (the ingress writes a new one at each start)",
            token_file.display()
        ),
        other => bail!("--admin {at}: answered {other}, which an ingress's admin listener does not"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq_command::Pick;

    #[test]
    fn each_action_is_the_request_the_listener_takes() {
        let (m, p, b) = request(&Act::List {
            limit: 7,
            payloads: true,
        });
        assert_eq!(
            (m, p.as_str(), b),
            (hyper::Method::GET, "/dlq?limit=7&payloads=true", None)
        );
        let (m, p, b) = request(&Act::Redrive {
            pick: Pick {
                ids: vec!["1-0".into()],
                all: false,
            },
            interface: Some("fetch".into()),
            caller: None,
            follow_moved: true,
            dry_run: false,
        });
        assert_eq!((m, p.as_str()), (hyper::Method::POST, "/dlq/redrive"));
        assert_eq!(
            b.unwrap(),
            json!({"ids": ["1-0"], "all": false, "interface": "fetch", "caller": null,
                   "followMoved": true, "dryRun": false})
        );
        let (_, p, b) = request(&Act::Purge {
            pick: Pick {
                ids: vec![],
                all: true,
            },
            dry_run: true,
        });
        assert_eq!(p, "/dlq/purge");
        assert_eq!(b.unwrap(), json!({"ids": [], "all": true, "dryRun": true}));
    }

    #[test]
    fn answers_are_shown_with_control_characters_escaped_and_tabs_kept() {
        assert_eq!(
            shown("1-0\tsent\t/v1/x\u{1b}[2J\n  {\"a\": 1}\n"),
            "1-0\tsent\t/v1/x\\u{1b}[2J\n  {\"a\": 1}\n"
        );
    }

    #[test]
    fn a_token_is_read_from_a_small_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_token(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, "a".repeat(4096)).unwrap();
        let e = read_token(&big).unwrap_err();
        assert!(e.to_string().contains("over 1024 bytes"), "{e}");
        let ok = dir.path().join("token");
        std::fs::write(&ok, format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(read_token(&ok).unwrap(), "ab".repeat(32));
    }

    #[tokio::test]
    async fn only_loopback_and_a_token_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let list = Act::List {
            limit: 1,
            payloads: false,
        };
        let e = ask("10.0.0.1:9190".parse().unwrap(), dir.path(), &list)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let file = dir.path().join("token");
        std::fs::write(&file, "not\x1b[2J hex").unwrap();
        let e = ask("127.0.0.1:1".parse().unwrap(), &file, &list)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not an admin token"), "{e}");
    }
}

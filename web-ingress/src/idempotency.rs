//! Idempotency keys from callers (`Idempotency-Key`): a repeat of a request
//! with the same key and body gets the first one's answer, and nothing runs
//! twice; the same key with another body is refused (`422`), and a repeat
//! while the first is still running gets `409`.
//!
//! ```text
//! POST, Idempotency-Key K ─▶ SET sluice:{ns/p}:i:<interface>:<sha256(K)> "<sha256(body)> <answer handle> <deadline>" NX GET PX …
//!   set     ─▶ the request runs; its answer is stored like an asynchronous one (async:<handle>)
//!   present ─▶ other body: 422 │ answer stored: that answer │ none yet: 409 │ past the deadline: 504
//! ```
//!
//! The key is kept as long as the answer (deadline + `results.ttl` +
//! skew). It is deduplication at the edge: the workers stay at-least-once.
//! What the store holds cannot fetch an answer: it names the answer's
//! address (a digest of the caller and the fetch id), not the id, and the
//! caller's key is stored as a digest too.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_crds::InterfacePlan;
use sluice_platform::clock::now_ms;
use sluice_platform::keyring::hex;
use sluice_platform::Kv;

use crate::async_answers;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest key accepted (the IETF draft's keys are UUIDs; 255 leaves room).
pub const MAX_KEY_LEN: usize = 255;

/// The `Idempotency-Key` of a request, if it sent one.
///
/// # Errors
/// `400 bad_idempotency_key`: empty, longer than [`MAX_KEY_LEN`], not
/// printable ASCII, or sent twice.
pub fn key_of(headers: &HeaderMap, rid: &str) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_idempotency_key",
            format!("Idempotency-Key {why}"),
            rid,
        )
    };
    if values.next().is_some() {
        return Err(bad("is sent more than once"));
    }
    let k = v.as_bytes();
    if k.is_empty() || k.len() > MAX_KEY_LEN || !k.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(bad(&format!(
            "must be 1 to {MAX_KEY_LEN} printable ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(k).into_owned()))
}

/// The store's key name part for caller key `key`: its digest, so neither
/// the key nor its length is stored.
pub fn digest(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// What the store holds for a key: whose request it was and where its
/// answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// SHA-256 of the request's JSON body (as parsed and written again).
    pub body: String,
    /// The answer's address, `async:<handle>`.
    pub address: String,
    /// The first request's deadline, ms since the epoch.
    pub deadline: u64,
}

impl Claim {
    pub fn to_value(&self) -> String {
        format!("{} {} {}", self.body, self.address, self.deadline)
    }

    /// `None` for a value this ingress did not write.
    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.split(' ');
        let (body, address, deadline) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || body.len() != 64 || !address.starts_with("async:") {
            return None;
        }
        Some(Self {
            body: body.to_string(),
            address: address.to_string(),
            deadline: deadline.parse().ok()?,
        })
    }
}

/// SHA-256 of a request body as parsed (so whitespace and key order do not
/// make two equal bodies differ).
pub fn body_digest(body: &serde_json::Value) -> String {
    hex(&Sha256::digest(body.to_string().as_bytes()))
}

/// How long a claim is kept after its deadline: as long as the answer.
pub fn kept_after_deadline(results_ttl: Duration, skew: Duration) -> Duration {
    results_ttl.saturating_add(skew)
}

/// `422`: the key was used for another body.
pub fn reused(rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a request with another body",
        rid,
    )
}

/// `409`: the request the key was first used for is still running.
pub fn in_progress(rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_progress",
        "the request first sent with this Idempotency-Key is still running",
        rid,
    )
    .retry_after(1)
}

/// A repeat of an idempotent request (`first` is what the store holds):
/// the first one's answer, or why there is none to give.
pub async fn repeated(
    s: &AppState,
    it: &InterfacePlan,
    this: &Claim,
    first: &str,
    rid: &str,
) -> Result<Value, ApiError> {
    let Some(first) = Claim::parse(first) else {
        // Not written by this ingress: the key is taken all the same.
        return Err(in_progress(rid));
    };
    if first.body != this.body {
        return Err(reused(rid));
    }
    match async_answers::stored(s, it, &first.address).await? {
        Some(answer) => answer,
        None if now_ms() > first.deadline.saturating_add(crate::state::skew_ms(s)) => {
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the request first sent with this Idempotency-Key had no answer by its deadline",
                rid,
            ))
        }
        None => Err(in_progress(rid)),
    }
}

/// An idempotency key this request claimed: released (deleted) if the
/// request is not queued after all, so the caller may try again.
pub struct ClaimGuard {
    store: Arc<dyn Kv>,
    key: String,
    armed: bool,
}

impl ClaimGuard {
    pub fn new(store: Arc<dyn Kv>, key: String) -> Self {
        Self {
            store,
            key,
            armed: true,
        }
    }

    /// Disarmed: the key stays with the request.
    pub fn kept(mut self) -> Self {
        self.armed = false;
        self
    }

    /// Releases the key now.
    pub fn release(mut self) {
        self.armed = true;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.armed {
            let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
            tokio::spawn(async move {
                if let Err(e) = store.delete(&key).await {
                    tracing::warn!(error = %e, "could not release an idempotency key; it expires with its answer");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_are_one_printable_ascii_value_of_bounded_length() {
        assert_eq!(key_of(&headers(&[]), "r").unwrap(), None);
        assert_eq!(
            key_of(&headers(&[b"8e03978e-40d5-43e8-bc93-6894a57f9324"]), "r").unwrap(),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324".into())
        );
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        for bad in [
            &headers(&[b"a", b"b"]),
            &headers(&[&long]),
            &headers(&[b"caf\xc3\xa9"]),
        ] {
            let e = key_of(bad, "r").unwrap_err();
            assert_eq!(e.code, "bad_idempotency_key");
        }
    }

    #[test]
    fn a_claim_reads_back_and_foreign_values_do_not() {
        let c = Claim {
            body: body_digest(&json!({"a": 1})),
            address: format!("async:{}", "f".repeat(64)),
            deadline: 1_733_150_000_000,
        };
        assert_eq!(Claim::parse(&c.to_value()), Some(c.clone()));
        for bad in [
            "",
            "x y z",
            &format!("{} ing-1 5", c.body),
            &format!("{} extra", c.to_value()),
        ] {
            assert_eq!(Claim::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn equal_bodies_have_one_digest_whatever_their_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":[1,2]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{ "b": [1, 2], "a": 1 }"#).unwrap();
        assert_eq!(body_digest(&a), body_digest(&b));
        assert_ne!(body_digest(&a), body_digest(&json!({"a": 2, "b": [1, 2]})));
        assert_ne!(digest("k"), "k");
    }
}

//! The HTTP client tests call interfaces and admin endpoints with.
//!
//! A transport error (refused, reset, client timeout) is an `Err` kept apart
//! from any HTTP answer: "every request gets an answer" means no `Err`.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// A client with a whole-request timeout.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The body exactly as received.
    pub body: Vec<u8>,
    /// The `X-Request-Id` response header.
    pub request_id: Option<String>,
    /// The `Retry-After` response header.
    pub retry_after: Option<String>,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code` of an error body.
    pub fn error_code(&self) -> Option<String> {
        self.json()
            .pointer("/error/code")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Http {
    /// A client giving up on any request after `timeout`; pick it well
    /// above the interface timeout so a hang shows as an `Err`.
    ///
    /// # Panics
    /// When the TLS backend cannot be initialised.
    pub fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("build an HTTP client");
        Self { client }
    }

    /// POSTs `body` as JSON, with `X-Request-Id` when given.
    ///
    /// # Errors
    /// A transport error, as text.
    pub async fn post(
        &self,
        url: &str,
        body: &Value,
        request_id: Option<&str>,
    ) -> Result<Answer, String> {
        match request_id {
            Some(id) => self.post_with(url, body, &[("x-request-id", id)]).await,
            None => self.post_with(url, body, &[]).await,
        }
    }

    /// POSTs `body` as JSON with `headers`.
    ///
    /// # Errors
    /// A transport error, as text.
    pub async fn post_with(
        &self,
        url: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).map_err(|e| e.to_string())?);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Self::send(req).await
    }

    /// POSTs like [`Http::post`], again and again while the answer is
    /// `503 backend_unavailable`: a Redis-backed process starts (and is
    /// ready) before its Redis connection is up, and answers 503 meanwhile
    /// by design. Returns the first other answer.
    ///
    /// # Panics
    /// When there is none within `patience`, or on a transport error.
    pub async fn post_when_connected(&self, url: &str, body: &Value, patience: Duration) -> Answer {
        let deadline = Instant::now() + patience;
        loop {
            let a = self
                .post(url, body, None)
                .await
                .unwrap_or_else(|e| panic!("POST {url}: {e}"));
            if a.status != 503 || a.error_code().as_deref() != Some("backend_unavailable") {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "{url} still answers 503 backend_unavailable after {patience:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` with `Prefer: respond-async`, again while the answer is
    /// `503` (the process is not connected to Redis yet); returns the first
    /// other answer.
    ///
    /// # Panics
    /// When there is none within `patience`, or on a transport error.
    pub async fn post_async_when_connected(
        &self,
        url: &str,
        body: &Value,
        patience: Duration,
    ) -> Answer {
        let deadline = Instant::now() + patience;
        loop {
            let a = self
                .post_with(url, body, &[("prefer", "respond-async")])
                .await
                .unwrap_or_else(|e| panic!("POST {url}: {e}"));
            if a.status != 503 || Instant::now() >= deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GETs an asynchronous request's `url` again while it answers `202`
    /// (pending) or `503` (not connected yet); returns the first other
    /// answer, or the last one after `patience`.
    ///
    /// # Panics
    /// On a transport error.
    pub async fn get_when_settled(&self, url: &str, patience: Duration) -> Answer {
        let deadline = Instant::now() + patience;
        loop {
            let a = self
                .get(url)
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            if !matches!(a.status, 202 | 503) || Instant::now() >= deadline {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GETs `url`.
    ///
    /// # Errors
    /// A transport error, as text.
    pub async fn get(&self, url: &str) -> Result<Answer, String> {
        Self::send(self.client.get(url)).await
    }

    async fn send(req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.map_err(|e| format!("{e:#}"))?.to_vec();
        Ok(Answer {
            status,
            body,
            request_id,
            retry_after,
            elapsed: started.elapsed(),
        })
    }
}

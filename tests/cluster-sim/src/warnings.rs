//! Warnings a request earns (unknown fields dropped under `fieldValidation=Warn`, Pod Security
//! levels a workload's pods would violate), sent back as `Warning` response headers the way
//! the API server writes them: `299 - "text"`, one header per warning, duplicates once
//! (`k8s.io/apimachinery/pkg/util/net` `NewWarningHeader`, `k8s.io/apiserver/pkg/warning`).

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use parking_lot::Mutex;

/// The warnings collected while one request is served.
#[derive(Debug, Clone, Default)]
pub struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    /// Record `text` once; text with control characters is dropped, as upstream drops it.
    pub(crate) fn push(&self, text: impl Into<String>) {
        let text = text.into();
        if text.chars().any(char::is_control) {
            return;
        }
        let mut all = self.0.lock();
        if !all.contains(&text) {
            all.push(text);
        }
    }

    /// Everything recorded so far, in order.
    pub(crate) fn all(&self) -> Vec<String> {
        self.0.lock().clone()
    }

    /// Add one `Warning` header per recorded warning to `resp`.
    pub(crate) fn attach(&self, resp: &mut Response) {
        for text in self.all() {
            if let Ok(v) = HeaderValue::from_bytes(header_value(&text).as_bytes()) {
                resp.headers_mut()
                    .append(HeaderName::from_static("warning"), v);
            }
        }
    }
}

/// `299 - "text"` with `"` and `\` escaped.
pub(crate) fn header_value(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    format!("299 - {quoted}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_code_agent_and_quoted_text() {
        assert_eq!(
            header_value(r#"unknown field "spec.foo""#),
            r#"299 - "unknown field \"spec.foo\"""#
        );
        assert_eq!(header_value(r"a\b"), r#"299 - "a\\b""#);
    }

    #[test]
    fn duplicates_and_control_characters_are_dropped() {
        let w = Warnings::default();
        w.push("x");
        w.push("x");
        w.push("bad\nline");
        assert_eq!(w.all(), vec!["x".to_string()]);
    }
}

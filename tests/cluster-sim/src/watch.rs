//! Watch streams: newline-delimited JSON events read from the store's history after a
//! resourceVersion, with selector transitions (an object leaving the selector is `DELETED`),
//! bookmarks, `sendInitialEvents`, `timeoutSeconds`, an `ERROR` event with `410 Expired`
//! when the history no longer reaches back far enough, and injected stream cuts.
//!
//! ```text
//! snapshot/cursor → [initial ADDED…] → loop { drain history > cursor → send } until timeout/cut/close
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::ops::present;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::sim::Core;
use crate::store::{meta, EventType, State};
use crate::table::Render;

/// What a watch request asked for.
pub(crate) struct WatchParams {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub cut_after: Option<usize>,
    pub render: Render,
}

impl WatchParams {
    fn matches(&self, rt: &ResourceType, ns: &str, obj: &Value) -> bool {
        (!rt.namespaced || self.namespace.as_deref().is_none_or(|n| n == ns))
            && self.labels.matches(meta(obj, "labels"))
            && self.fields.matches(obj)
    }
}

/// One watch event line. `type` comes before `object`, as the API server
/// writes it (Go's `WatchEvent` field order): a client may decode the object
/// in one pass once it knows the type, and the stand-in must not hide a
/// client that depends on that order, nor one that breaks without it.
fn line(kind: &str, object: Value) -> Bytes {
    let mut s = format!(r#"{{"type":{},"object":"#, Value::from(kind));
    s.push_str(&object.to_string());
    s.push_str("}\n");
    Bytes::from(s)
}

fn wrap(rt: &ResourceType, obj: Value, render: Render) -> Value {
    render.one(present(rt, obj))
}

/// Events after `cursor` that this watch sees, and the new cursor.
fn drain(
    st: &State,
    rt: &ResourceType,
    p: &WatchParams,
    cursor: u64,
) -> Result<(Vec<Bytes>, u64), ApiError> {
    if st.compacted > cursor {
        return Err(ApiError::expired(cursor, st.compacted));
    }
    let start = st.history.partition_point(|e| e.rv <= cursor);
    let mut out = Vec::new();
    for e in st.history.range(start..) {
        if e.key.group != rt.group || e.key.resource != rt.plural {
            continue;
        }
        let now_in = p.matches(rt, &e.key.namespace, &e.object);
        let was_in = e
            .old
            .as_ref()
            .is_some_and(|o| p.matches(rt, &e.key.namespace, o));
        let kind = match e.etype {
            EventType::Added if now_in => "ADDED",
            EventType::Modified if now_in && was_in => "MODIFIED",
            EventType::Modified if now_in => "ADDED",
            EventType::Modified if was_in => "DELETED",
            EventType::Deleted if now_in || was_in => "DELETED",
            _ => continue,
        };
        out.push(line(kind, wrap(rt, e.object.clone(), p.render)));
    }
    Ok((out, st.rv))
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata}),
    )
}

/// Start a watch; the response streams until timeout, cut, client close or shutdown.
pub(crate) fn start(
    core: Arc<Core>,
    rt: Arc<ResourceType>,
    p: WatchParams,
) -> Result<Response, ApiError> {
    let requested: Option<u64> = match p.resource_version.as_deref() {
        None | Some("0") => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (initial, cursor, expired) = {
        let st = core.state.lock();
        match requested {
            Some(rv) if !p.send_initial_events => {
                let expired = (st.compacted > rv).then(|| ApiError::expired(rv, st.compacted));
                (Vec::new(), rv, expired)
            }
            _ => {
                let items: Vec<Bytes> = st
                    .objects_of(&rt.group, &rt.plural, None)
                    .filter(|(k, o)| p.matches(&rt, &k.namespace, o))
                    .map(|(_, o)| line("ADDED", wrap(&rt, o.clone(), p.render)))
                    .collect();
                (items, st.rv, None)
            }
        }
    };
    let mut rx_changed = core.changed.subscribe();
    let mut rx_epoch = core.watch_epoch.subscribe();
    tokio::spawn(async move {
        let mut sent = 0usize;
        let cut = p.cut_after;
        let deadline = p.timeout.map(|t| tokio::time::Instant::now() + t);
        if let Some(e) = expired {
            let _ = tx.send(line("ERROR", e.status_body())).await;
            return;
        }
        for b in initial {
            if cut.is_some_and(|c| sent >= c) || tx.send(b).await.is_err() {
                return;
            }
            sent += 1;
        }
        if p.send_initial_events
            && p.bookmarks
            && tx.send(bookmark(&rt, cursor, true)).await.is_err()
        {
            return;
        }
        let mut cursor = cursor;
        let mut bookmarks = tokio::time::interval(core.opts.bookmark_interval);
        bookmarks.tick().await;
        loop {
            let drained = {
                let st = core.state.lock();
                drain(&st, &rt, &p, cursor)
            };
            match drained {
                Err(e) => {
                    let _ = tx.send(line("ERROR", e.status_body())).await;
                    return;
                }
                Ok((events, next)) => {
                    cursor = next;
                    for b in events {
                        if cut.is_some_and(|c| sent >= c) {
                            return;
                        }
                        if tx.send(b).await.is_err() {
                            return;
                        }
                        sent += 1;
                    }
                }
            }
            if cut.is_some_and(|c| sent >= c) {
                return;
            }
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = core.cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = rx_epoch.changed() => return,
                _ = tokio::time::sleep_until(sleep_until) => return,
                r = rx_changed.changed() => if r.is_err() { return },
                _ = bookmarks.tick(), if p.bookmarks => {
                    if tx.send(bookmark(&rt, cursor, false)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        crate::server::stream_body(rx),
    )
        .into_response())
}

//! Kubernetes Events about StreamPipelines (`events.k8s.io/v1`).
//!
//! Like kube's `Recorder`, an event repeated within [`SERIES_TTL`] becomes a
//! series — one object whose `series.count` and `lastObservedTime` grow by a
//! PATCH — instead of a new object each time. Unlike it, a repeat means the
//! same *note* too: kube's recorder folds every event of one reason and
//! action about an object into the first one's note, so ten different
//! Deployments "Updated" in a minute would read as one Deployment updated
//! ten times, and a new failure would show the old failure's message.
//!
//! Must not: fail a reconcile (callers log a publishing error and go on), or
//! carry secret material in a note (notes name objects and errors only).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use parking_lot::Mutex;
use serde_json::json;

pub use kube::runtime::events::EventType;

/// How long a published event can still become a series.
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// Notes are cut to this many bytes (the API server refuses over 1 kB).
pub const MAX_NOTE: usize = 1000;

/// What makes two events the same event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    regarding: String,
    uid: Option<String>,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

#[derive(Debug)]
struct Published {
    name: String,
    count: i32,
    at: Instant,
}

/// Publishes events as one reporting controller and instance.
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
    published: Mutex<HashMap<Key, Published>>,
}

impl Events {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            published: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an event about `regarding`; a repeat of the same event
    /// within [`SERIES_TTL`] counts up its series.
    ///
    /// # Errors
    /// The API server refused the create or patch.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let note = truncate(note, MAX_NOTE);
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = Key {
            namespace: namespace.clone(),
            regarding: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone(),
            warning: type_ == EventType::Warning,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = MicroTime(Timestamp::now());
        // The map is locked only to decide: the request is made without it,
        // so one slow event write never holds up the others.
        let repeat = {
            let mut published = self.published.lock();
            published.retain(|_, p| p.at.elapsed() < SERIES_TTL);
            published.get_mut(&key).map(|p| {
                p.count += 1;
                p.at = Instant::now();
                (p.name.clone(), p.count)
            })
        };
        if let Some((name, count)) = repeat {
            let series = json!({"series": {"count": count, "lastObservedTime": now}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired on the server (or not created yet): start anew.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!("{}.{:x}", key.regarding, Timestamp::now().as_nanosecond());
        self.published.lock().insert(
            key.clone(),
            Published {
                name: name.clone(),
                count: 1,
                at: Instant::now(),
            },
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(now),
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(note.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            let mut published = self.published.lock();
            if published.get(&key).is_some_and(|p| p.name == name) {
                published.remove(&key);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc");
        // "é" is two bytes: cutting inside it keeps the character out.
        assert_eq!(truncate("aé", 2), "a");
    }
}

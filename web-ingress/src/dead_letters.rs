//! A pipeline's dead letters (`sluice:{ns/p}:dlq`): listed, sent again
//! (redriven) or deleted (purged), for the person on call.
//!
//! ```text
//! list:    XREAD the stream ─▶ each entry verified (MAC under each group's request key) ─▶ Letter | refused
//! redrive: Letter ─▶ node's group in the current plan ─▶ open the answer store async:<sha256(caller, id)>
//!          ─▶ a new request (new nonce, deadline, plan generation; same node, payload, request id), signed
//!          ─▶ XADD q:<group> ─▶ XDEL the dead letter ─▶ <path>/requests/<id>
//! purge:   XDEL exactly the ids asked for
//! ```
//!
//! A dead letter is untrusted: every group's process may write the stream,
//! so a compromised one could put anything there. Nothing is decoded before
//! its MAC verified under the request key of some group of the pipeline
//! ([`Verifier::verify_dead_letter`]), and a refused entry is never sent
//! again (it can be purged). Sending one again needs the request key of its
//! node's group: the full key ring, which a user of the cluster does not
//! hold; this module does not decide who may use it.
//!
//! A redriven request's caller is gone; its answer is stored like that of
//! an asynchronous request of the interface chosen, fetched at
//! `GET <path>/requests/<id>` by `caller` (the anonymous caller when the
//! interface does not identify callers).

use std::sync::Arc;

use serde_json::Value;
use sluice_crds::{GroupRole, InterfaceKind, InterfacePlan, Plan};
use sluice_platform::clock::now_ms;
use sluice_platform::envelope::{Envelope, Kind, StreamEntry};
use sluice_platform::metrics::Rejections;
use sluice_platform::{
    BackendError, DeadLetterNote, Keys, Queue, RedisBackend, Rejection, ReplyChannel,
    SharedKeyRing, Signer, Verifier,
};

use crate::job_id::JobId;

/// Most entries read per round trip.
const PAGE: usize = 500;
/// Most bytes of entries one read may bring, at their largest size. A
/// verified entry's payload is parsed, and parsed JSON can take 16 times
/// its bytes (`[0,0,…]`): kept small.
const PAGE_BYTES: usize = 4 << 20;
/// Why an action past its deadline stopped.
pub const OUT_OF_TIME: &str =
    "out of time: what is listed above was done; run it again for the rest";
/// A request entry's bytes beside its payload, at most: envelope fields,
/// MAC, kid, and a note.
const ENTRY_OVERHEAD: usize = 16 << 10;
/// Most bytes of entries one listing with payloads holds; a longer one
/// stops there (without payloads, each is dropped once verified).
pub const LIST_BYTES: usize = 4 << 20;
/// The most entries one command reads: the stream keeps the newest 10,000
/// (the workers trim it as they write), so this is never reached unless
/// something else writes it.
pub const MAX_READ: usize = 20_000;

/// One entry of the dead-letter stream.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its stream id; its first part is when it was dead-lettered (ms).
    pub id: String,
    /// Bytes of the stored entry.
    pub bytes: usize,
    /// The request it holds, or why it is not trusted.
    pub letter: Result<Letter, Rejection>,
    /// Why it is there, as the process that wrote it says (outside the
    /// MAC, so only as true as that process).
    pub note: Option<DeadLetterNote>,
}

/// A verified dead letter: the request as it last was.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The group it was addressed to.
    pub group: String,
    pub node: String,
    /// The caller's request id.
    pub request_id: String,
    /// Its input.
    pub payload: Value,
}

impl Listed {
    /// When it was dead-lettered, ms since the epoch (from its id).
    pub fn at_ms(&self) -> Option<u64> {
        self.id.split_once('-')?.0.parse().ok()
    }
}

/// What a redrive did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// Sent again; its answer is fetched at `location`.
    Sent { id: String, location: String },
    /// Would be sent (a dry run).
    WouldSend { id: String },
    /// Left in the stream, and why.
    Refused { id: String, why: String },
}

/// How redriven requests are answered.
#[derive(Debug, Clone)]
pub struct Answering<'a> {
    /// The interface whose store keeps the answers (and whose
    /// `asyncTimeout` is their deadline).
    pub interface: &'a InterfacePlan,
    /// Who may fetch them ("" for the anonymous caller).
    pub caller: &'a str,
    /// Send a letter whose node moved to its new group.
    pub follow_moved: bool,
}

/// A pipeline's dead-letter stream and what acts on it.
pub struct DeadLetters {
    pub plan: Arc<Plan>,
    pub keys: Keys,
    pub queue: Arc<dyn Queue>,
    pub replies: Arc<dyn ReplyChannel>,
    pub verifier: Verifier,
    /// Signs redriven requests (stamps the plan's generation).
    pub signer: Signer,
}

impl DeadLetters {
    /// The dead letters of `plan` on `redis`, verified and signed with
    /// `ring` (the pipeline's whole key ring).
    pub fn on_redis(plan: Plan, ring: SharedKeyRing, redis: Arc<RedisBackend>) -> Self {
        let keys = Keys::new(&plan.id.namespace, &plan.id.name);
        let mut registry = prometheus_client::registry::Registry::default();
        let verifier = Verifier::new(
            ring.clone(),
            None,
            keys.clone(),
            plan.security.clock_skew,
            plan.security.max_payload_bytes as usize,
            Rejections::register(&mut registry),
        );
        let signer = Signer::new(ring, &keys, &plan.ingress_group).with_plan(plan.generation());
        Self {
            plan: Arc::new(plan),
            keys,
            queue: redis.clone(),
            replies: redis,
            verifier,
            signer,
        }
    }

    /// Entries one read asks for: as many as fit in [`PAGE_BYTES`] at the
    /// largest size a request entry of this pipeline may have (one at
    /// least). An entry a process made larger still comes whole: Redis
    /// bounds it, nothing here can.
    fn page_len(&self) -> usize {
        let largest = usize::try_from(self.plan.security.max_payload_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(ENTRY_OVERHEAD);
        (PAGE_BYTES / largest.max(1)).clamp(1, PAGE)
    }

    /// Up to `max` entries after `after` (from the start: `None`), oldest
    /// first, each verified: one read.
    ///
    /// # Errors
    /// The backend's.
    pub async fn page(&self, after: Option<&str>, max: usize) -> Result<Vec<Listed>, BackendError> {
        let groups: Vec<&str> = self.plan.groups.keys().map(String::as_str).collect();
        let got = self
            .replies
            .read_after(
                &self.keys.dead_letter(),
                after,
                max.clamp(1, self.page_len()),
            )
            .await?
            .unwrap_or_default();
        Ok(got
            .into_iter()
            .map(|(id, entry)| Listed {
                bytes: entry.stored_len(),
                letter: self.letter(&entry, &groups),
                note: DeadLetterNote::decode(&entry.note),
                id,
            })
            .collect())
    }

    /// Up to `max` entries, oldest first, each verified, and whether the
    /// listing stopped short at [`LIST_BYTES`] of entries. Payloads are
    /// kept only with `payloads`.
    ///
    /// # Errors
    /// The backend's.
    pub async fn list(
        &self,
        max: usize,
        payloads: bool,
    ) -> Result<(Vec<Listed>, bool), BackendError> {
        let max = max.min(MAX_READ);
        let mut out: Vec<Listed> = vec![];
        let mut bytes = 0usize;
        while out.len() < max {
            let after = out.last().map(|l| l.id.clone());
            let got = self.page(after.as_deref(), max - out.len()).await?;
            if got.is_empty() {
                break;
            }
            for mut l in got {
                if payloads {
                    bytes = bytes.saturating_add(l.bytes);
                } else if let Ok(letter) = &mut l.letter {
                    letter.payload = Value::Null;
                }
                out.push(l);
                if bytes > LIST_BYTES {
                    return Ok((out, true));
                }
            }
        }
        Ok((out, false))
    }

    /// The entry `id` (as listed), if the stream holds it.
    ///
    /// # Errors
    /// The backend's.
    pub async fn get(&self, id: &str) -> Result<Option<Listed>, BackendError> {
        let Some(before) = before(id) else {
            return Ok(None);
        };
        let got = self.page(Some(&before), 1).await?;
        Ok(got.into_iter().next().filter(|l| l.id == id))
    }

    fn letter(&self, entry: &StreamEntry, groups: &[&str]) -> Result<Letter, Rejection> {
        let env = self.verifier.verify_dead_letter(entry, groups)?;
        Ok(Letter {
            group: env.dest,
            node: env.node.unwrap_or_default(),
            request_id: env.rid,
            payload: env.payload,
        })
    }

    /// Whether `letter` can be sent again to answer through `how`: the
    /// group that runs its node now, or why not. Only to the group it was
    /// dead-lettered from unless `how.follow_moved`: any process that holds
    /// that group's request key could have written the letter, and sending
    /// it elsewhere would sign for it what it cannot.
    pub fn target(&self, letter: &Letter, how: &Answering<'_>) -> Result<String, String> {
        let it = how.interface;
        if it.kind != InterfaceKind::Http {
            return Err(format!(
                "interface `{}` is not an http interface: only those store answers to fetch",
                it.name
            ));
        }
        let Some(node) = self.plan.nodes.get(&letter.node) else {
            return Err(format!(
                "node `{}` is not in the pipeline any more",
                letter.node
            ));
        };
        let group = &node.group;
        if self.plan.groups.get(group).map(|g| g.role) != Some(GroupRole::Worker) {
            return Err(format!(
                "node `{}` runs in the ingress (group `{group}`): only nodes of worker groups are sent again",
                letter.node
            ));
        }
        if *group != letter.group && !how.follow_moved {
            return Err(format!(
                "node `{}` now runs on group `{group}`, not on `{}` where it was dead-lettered: \
                 --follow-moved sends it there, for letters you trust (any process of `{}` could have written it)",
                letter.node, letter.group, letter.group
            ));
        }
        if !self
            .plan
            .reachable_from(&it.entries())
            .contains(letter.node.as_str())
        {
            return Err(format!(
                "node `{}` is not reached from interface `{}`, which would not take its answer",
                letter.node, it.name
            ));
        }
        Ok(group.clone())
    }

    /// Sends the dead letters `chosen` again (with `dry_run`, only says
    /// which would be): each to the group that runs its node now, its
    /// answer stored for `how`, then deleted from the stream. One outcome
    /// each, in order, and the backend error that stopped the rest, if
    /// one did: the letter it stopped at stays listed (and was sent when
    /// its outcome says so), those after it were not looked at.
    ///
    /// Past `deadline` it stops before the next letter, the reason second.
    pub async fn redrive(
        &self,
        chosen: &[Listed],
        how: &Answering<'_>,
        dry_run: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> (Vec<Redriven>, Option<String>) {
        let mut out = vec![];
        for l in chosen {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return (out, Some(OUT_OF_TIME.into()));
            }
            let id = l.id.clone();
            let letter = match &l.letter {
                Ok(letter) => letter,
                Err(why) => {
                    out.push(Redriven::Refused {
                        id,
                        why: format!("not trusted ({}): purge it", why.reason()),
                    });
                    continue;
                }
            };
            let group = match self.target(letter, how) {
                Ok(g) => g,
                Err(why) => {
                    out.push(Redriven::Refused { id, why });
                    continue;
                }
            };
            if dry_run {
                out.push(Redriven::WouldSend { id });
                continue;
            }
            match self.send(letter, &group, how).await {
                Ok(Ok(location)) => {
                    out.push(Redriven::Sent {
                        id: id.clone(),
                        location,
                    });
                    // Sent before deleted: a failure here leaves it listed
                    // and sent, never lost.
                    if let Err(e) = self.purge(&[id], false).await {
                        return (out, Some(e.to_string()));
                    }
                }
                Ok(Err(why)) => out.push(Redriven::Refused { id, why }),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    async fn send(
        &self,
        letter: &Letter,
        group: &str,
        how: &Answering<'_>,
    ) -> Result<Result<String, String>, BackendError> {
        let it = how.interface;
        let timeout = it.async_timeout;
        let deadline =
            now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let job = JobId::new(deadline);
        let address = job.address(how.caller);
        let retention = crate::job_id::retention(&self.plan, timeout);
        self.replies
            .open(&self.keys.reply(&address), retention)
            .await?;
        let mut env = Envelope {
            kind: Kind::Request,
            pipeline: self.keys.pipeline().to_string(),
            dest: group.to_string(),
            cid: uuid::Uuid::new_v4().to_string(),
            rid: letter.request_id.clone(),
            trace: None,
            ts: 0,
            nonce: String::new(),
            deadline,
            attempt: 1,
            node: Some(letter.node.clone()),
            plan: None,
            reply_to: Some(address),
            live: None,
            seq: None,
            last_seq: None,
            payload: letter.payload.clone(),
            error: None,
        };
        let signed = match self.signer.sign(&mut env) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.to_string())),
        };
        self.queue.push(&self.keys.queue(group), signed).await?;
        Ok(Ok(format!(
            "{}/requests/{}",
            it.path.trim_end_matches('/'),
            job.as_str()
        )))
    }

    /// Deletes the entries `ids` (with `dry_run`, nothing); how many there
    /// were.
    ///
    /// # Errors
    /// The backend's.
    pub async fn purge(&self, ids: &[String], dry_run: bool) -> Result<u64, BackendError> {
        if dry_run {
            return Ok(0);
        }
        let stream = self.keys.dead_letter();
        let mut n = 0;
        for chunk in ids.chunks(PAGE) {
            n += self.queue.delete(&stream, chunk).await?;
        }
        Ok(n)
    }
}

/// The stream id just before `id` (`<ms>-<seq>`): reading after it
/// starts at `id`. `None` for `0-0` (no entry has it) or a malformed id.
pub fn before(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    match (ms, seq) {
        (0, 0) => None,
        (ms, 0) => Some(format!("{}-{}", ms - 1, u64::MAX)),
        (ms, seq) => Some(format!("{ms}-{}", seq - 1)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_platform::memory::MemoryStreams;
    use sluice_platform::metrics::Rejections;
    use sluice_platform::{KeyRing, SharedKeyRing};
    use std::time::Duration;

    const MANIFEST: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: letters }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  interfaces:
    - { name: a, kind: http, path: /v1/a, entry: start, timeout: 5s }
    - { name: b, kind: http, path: /v1/b, entry: other, timeout: 5s }
  groups:
    - { name: web, role: ingress }
    - { name: cpu, role: worker }
    - { name: io, role: worker }
  nodes:
    - { name: start, group: web, uses: builtin/echo, next: work }
    - { name: work, group: cpu, uses: builtin/echo, next: finish }
    - { name: finish, group: io, uses: builtin/echo }
    - { name: other, group: io, uses: builtin/echo }
"#;

    pub(crate) fn letters() -> DeadLetters {
        let (_, plan) = sluice_crds::parse_manifest("letters.yaml", MANIFEST).unwrap();
        let keys = Keys::new("default", "letters");
        let ring = SharedKeyRing::fixed(KeyRing::ephemeral());
        let streams = MemoryStreams::new();
        DeadLetters {
            verifier: Verifier::new(
                ring.clone(),
                None,
                keys.clone(),
                Duration::from_secs(5),
                1 << 20,
                Rejections::default(),
            ),
            signer: Signer::new(ring, &keys, "web").with_plan(plan.generation()),
            plan: Arc::new(plan),
            keys,
            queue: streams.clone(),
            replies: streams,
        }
    }

    fn letter(group: &str, node: &str) -> Letter {
        Letter {
            group: group.into(),
            node: node.into(),
            request_id: "r".into(),
            payload: Value::Null,
        }
    }

    #[test]
    fn the_id_before_an_id_reads_from_that_id_on() {
        assert_eq!(before("5-3").as_deref(), Some("5-2"));
        assert_eq!(before("5-0").as_deref(), Some("4-18446744073709551615"));
        assert_eq!(before("0-0"), None);
        assert_eq!(before("x-1"), None);
        assert_eq!(before("1"), None);
    }

    #[test]
    fn a_read_holds_at_most_its_bytes_at_the_largest_entry() {
        let mut d = letters();
        assert_eq!(
            d.page_len(),
            (PAGE_BYTES / ((1 << 20) + ENTRY_OVERHEAD)).clamp(1, PAGE)
        );
        let mut plan = (*d.plan).clone();
        plan.security.max_payload_bytes = 64 << 20;
        d.plan = Arc::new(plan.clone());
        assert_eq!(d.page_len(), 1);
        plan.security.max_payload_bytes = 1024;
        d.plan = Arc::new(plan);
        assert_eq!(d.page_len(), PAGE_BYTES / (1024 + ENTRY_OVERHEAD));
        assert!(d.page_len() <= PAGE);
    }

    #[test]
    fn a_letter_goes_back_only_where_its_answer_is_taken_and_its_writer_could_send() {
        let d = letters();
        let it = |name: &str| d.plan.interfaces.iter().find(|i| i.name == name).unwrap();
        let how = |name, follow_moved| Answering {
            interface: it(name),
            caller: "",
            follow_moved,
        };
        assert_eq!(
            d.target(&letter("cpu", "work"), &how("a", false)),
            Ok("cpu".into())
        );
        assert_eq!(
            d.target(&letter("io", "finish"), &how("a", false)),
            Ok("io".into())
        );
        let refused = |l: Letter, h: Answering<'_>| d.target(&l, &h).unwrap_err();
        // Written by a process of io, for a node of cpu.
        let moved = refused(letter("io", "work"), how("a", false));
        assert!(moved.contains("--follow-moved"), "{moved}");
        assert_eq!(
            d.target(&letter("io", "work"), &how("a", true)),
            Ok("cpu".into())
        );
        // Interface a never reaches `other`: its answer would not be taken.
        let unreached = refused(letter("io", "other"), how("a", false));
        assert!(
            unreached.contains("not reached from interface `a`"),
            "{unreached}"
        );
        assert_eq!(
            d.target(&letter("io", "other"), &how("b", false)),
            Ok("io".into())
        );
        let gone = refused(letter("cpu", "gone"), how("a", false));
        assert!(gone.contains("not in the pipeline"), "{gone}");
        let ingress = refused(letter("web", "start"), how("a", false));
        assert!(ingress.contains("runs in the ingress"), "{ingress}");
    }
}

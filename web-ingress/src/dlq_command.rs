//! `sluice-web-ingress dlq list|redrive|purge`: a pipeline's dead letters
//! on Redis, for whoever runs it by hand and holds its key ring (on a
//! cluster the key ring stays with the operator), or, with `--admin`, those
//! of a running ingress that holds them itself (the `admin_client` module). What is done is in
//! [`crate::dead_letters`]; this is the command line: flags, connecting,
//! printing.
//!
//! Everything printed that comes from the stream (ids aside, which Redis
//! makes) passes through [`printable`]: a dead letter may have been written
//! by a compromised process, and a terminal must not take its request id
//! for control sequences.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use sluice_crds::{BackendKind, Plan};
use sluice_platform::clock::now_ms;
use sluice_platform::BackendError;
use sluice_platform::{RedisBackend, RedisConfig, SharedKeyRing};

use crate::dead_letters::{
    Answering, DeadLetters, Listed, Redriven, LIST_BYTES, MAX_READ, OUT_OF_TIME,
};

/// A pipeline's dead letters: on its Redis, with its key ring, or in its
/// ingress (memory and tcp backends), through the ingress's admin listener.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Lists dead letters, oldest first: id, age, group, node, request id,
    /// size, deliveries and reason; an entry whose MAC does not verify is
    /// listed as refused
    List {
        #[command(flatten)]
        target: Target,
        /// At most this many
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Print each one's payload (JSON) under it
        #[arg(long)]
        payloads: bool,
    },
    /// Sends dead letters again, each to the group that runs its node now
    /// (after a fix), and deletes them; each answer is stored like an
    /// asynchronous request's and fetched at the printed location
    Redrive {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pick: Pick,
        #[command(flatten)]
        how: RedriveOptions,
    },
    /// Deletes dead letters
    Purge {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        pick: Pick,
        /// Say what would be deleted; delete nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// How dead letters are sent again (the flags of every redrive command).
#[derive(Debug, Clone, Default, Args)]
pub struct RedriveOptions {
    /// The http interface whose answer store keeps the answers and whose
    /// asyncTimeout is their deadline [default: the only http interface]
    #[arg(long, value_name = "NAME")]
    pub interface: Option<String>,
    /// Who may fetch the answers, for an interface that identifies its
    /// callers [default: the anonymous caller]
    #[arg(long, value_name = "NAME")]
    pub caller: Option<String>,
    /// Send a letter whose node now runs on another group there (by
    /// default it is left: whoever could write it may not send to that
    /// group)
    #[arg(long)]
    pub follow_moved: bool,
    /// Say what would be sent; send nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// The pipeline and how to reach it: its Redis, with its manifest and key
/// ring, or the admin listener of the ingress holding its dead letters.
#[derive(Debug, Args)]
pub struct Target {
    /// The admin listener of a running ingress whose dead letters live in
    /// its process (memory and tcp backends), e.g. 127.0.0.1:9090; the
    /// Redis flags are then not used (only the command line sets this: an
    /// ingress's own SLUICE_ADMIN in the environment does not)
    #[arg(long, value_name = "ADDR", requires = "admin_token_file")]
    pub admin: Option<std::net::SocketAddr>,
    /// With --admin: the file the ingress wrote its admin token to
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub admin_token_file: Option<PathBuf>,
    /// StreamPipeline manifest of the pipeline (Redis backends)
    #[arg(
        long,
        value_name = "FILE",
        env = "SLUICE_PIPELINE",
        hide_env_values = true,
        required_unless_present = "admin"
    )]
    pub pipeline: Option<PathBuf>,
    /// Its Redis URL
    #[arg(
        long,
        value_name = "URL",
        env = "SLUICE_REDIS_URL",
        hide_env_values = true,
        required_unless_present = "admin"
    )]
    pub redis: Option<String>,
    /// Its key ring (as written by `keygen`): redrive signs with the
    /// request key of each dead letter's group
    #[arg(
        long,
        value_name = "DIR",
        env = "SLUICE_KEYS_DIR",
        hide_env_values = true,
        required_unless_present = "admin"
    )]
    pub keys: Option<PathBuf>,
    /// CA certificate for a rediss:// URL
    #[arg(
        long,
        value_name = "FILE",
        env = "SLUICE_REDIS_CA_FILE",
        hide_env_values = true
    )]
    pub redis_ca_file: Option<PathBuf>,
    /// File holding the Redis password (instead of one in the URL)
    #[arg(
        long,
        value_name = "FILE",
        env = "SLUICE_REDIS_PASSWORD_FILE",
        hide_env_values = true
    )]
    pub redis_password_file: Option<PathBuf>,
}

/// Which dead letters.
#[derive(Debug, Clone, Default, Args, serde::Deserialize)]
#[group(required = true, multiple = false)]
#[serde(deny_unknown_fields)]
pub struct Pick {
    /// This one (its id, as listed); repeatable
    #[arg(long = "id", value_name = "ID")]
    #[serde(default)]
    pub ids: Vec<String>,
    /// Every one in the stream now
    #[arg(long)]
    #[serde(default)]
    pub all: bool,
}

/// What to do with the dead letters, wherever it was asked (the command
/// line, or the ingress's admin listener).
#[derive(Debug, Clone)]
pub enum Act {
    List {
        limit: usize,
        payloads: bool,
    },
    Redrive {
        pick: Pick,
        interface: Option<String>,
        caller: Option<String>,
        follow_moved: bool,
        dry_run: bool,
    },
    Purge {
        pick: Pick,
        dry_run: bool,
    },
}

/// Why an [`Act`] did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// Refused before anything was done (a bad id, an unknown interface).
    #[error("{0}")]
    Refused(String),
    /// The backend failed; `done` is what was done before.
    #[error("{error}")]
    Stopped { done: String, error: String },
}

/// Runs `act` on `d`: what it did, as text (one line per letter). Letters
/// are read and acted on a read at a time (what one read holds is bounded:
/// [`DeadLetters::page`]); past `deadline` it stops between two reads and
/// says how far it got.
///
/// # Errors
/// [`ActError`].
pub async fn act(
    d: &DeadLetters,
    act: Act,
    deadline: Option<tokio::time::Instant>,
) -> Result<String, ActError> {
    match act {
        Act::List { limit, payloads } => {
            let (listed, cut) = d
                .list(limit, payloads)
                .await
                .map_err(|e| ActError::Stopped {
                    done: String::new(),
                    error: format!("reading the dead letters: {e}"),
                })?;
            let mut out = table(&listed, payloads, now_ms());
            if cut {
                let _ = writeln!(
                    out,
                    "… stopped after {} dead letter(s), {} MiB: list fewer at a time",
                    listed.len(),
                    LIST_BYTES >> 20
                );
            }
            Ok(out)
        }
        Act::Redrive {
            pick,
            interface,
            caller,
            follow_moved,
            dry_run,
        } => {
            let it = interface_of(&d.plan, interface.as_deref())?;
            let caller = match (caller, it.auth.is_some()) {
                (Some(c), _) => c,
                (None, false) => String::new(),
                (None, true) => {
                    return Err(ActError::Refused(format!(
                        "interface `{}` identifies its callers: name the one who may fetch the answers (caller)",
                        it.name
                    )))
                }
            };
            let how = Answering {
                interface: it,
                caller: &caller,
                follow_moved,
            };
            let mut batches = Batches::new(d, &pick).await?;
            let mut out = String::new();
            let mut n = 0;
            while let Some(batch) = batches.next(&out, deadline).await? {
                let (done, stopped) = d.redrive(&batch, &how, dry_run, deadline).await;
                n += done.len();
                for r in &done {
                    let _ = match r {
                        Redriven::Sent { id, location } => writeln!(out, "{id}\tsent\t{location}"),
                        Redriven::WouldSend { id } => writeln!(out, "{id}\twould be sent"),
                        Redriven::Refused { id, why } => {
                            writeln!(out, "{id}\tleft\t{}", printable(why))
                        }
                    };
                }
                batches.tell(&mut out);
                if let Some(e) = stopped {
                    return Err(ActError::Stopped {
                        error: format!("stopped after {n} dead letter(s): {e}"),
                        done: out,
                    });
                }
            }
            batches.tell(&mut out);
            Ok(out)
        }
        Act::Purge { pick, dry_run } => {
            let mut batches = Batches::new(d, &pick).await?;
            let mut n = 0;
            let said = |n: u64| {
                if dry_run {
                    format!("would delete {n} dead letter(s)\n")
                } else {
                    format!("deleted {n} dead letter(s)\n")
                }
            };
            loop {
                let batch = match batches.next(&said(n), deadline).await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => return Err(e),
                };
                let ids: Vec<String> = batch.into_iter().map(|l| l.id).collect();
                n += if dry_run {
                    ids.len() as u64
                } else {
                    d.purge(&ids, false).await.map_err(|e| ActError::Stopped {
                        done: said(n),
                        error: format!("deleting: {e}"),
                    })?
                };
            }
            let mut out = said(n);
            batches.tell(&mut out);
            Ok(out)
        }
    }
}

impl DlqAction {
    /// Where to act, and what to do.
    pub fn split(self) -> (Target, Act) {
        match self {
            DlqAction::List {
                target,
                limit,
                payloads,
            } => (target, Act::List { limit, payloads }),
            DlqAction::Redrive { target, pick, how } => (
                target,
                Act::Redrive {
                    pick,
                    interface: how.interface,
                    caller: how.caller,
                    follow_moved: how.follow_moved,
                    dry_run: how.dry_run,
                },
            ),
            DlqAction::Purge {
                target,
                pick,
                dry_run,
            } => (target, Act::Purge { pick, dry_run }),
        }
    }
}

/// Does `what` on the pipeline's Redis named by `target` (`--admin` is
/// the `admin_client` module's).
///
/// # Errors
/// Bad flags or manifest, an unreachable Redis; what the action itself
/// answered is the inner result.
pub async fn on_redis(target: &Target, what: Act) -> anyhow::Result<Result<String, ActError>> {
    Ok(act(&open(target).await?, what, None).await)
}

/// Prints what was done to stdout.
///
/// # Errors
/// The action was refused, or stopped midway (what was done before is
/// printed first).
pub fn report(done: Result<String, ActError>) -> anyhow::Result<()> {
    match done {
        Ok(out) => {
            print!("{out}");
            Ok(())
        }
        Err(ActError::Refused(why)) => bail!("{why}"),
        Err(ActError::Stopped { done, error }) => {
            print!("{done}");
            bail!("{error}")
        }
    }
}

/// The dead letters a [`Pick`] names, a read at a time: each id named
/// (all checked to be there before anything is done), or every entry the
/// stream held when the action began (up to its newest id then, in the
/// stream's own order: letters written meanwhile are left).
struct Batches<'a> {
    d: &'a DeadLetters,
    /// The ids named, each once; empty with `all`.
    ids: Vec<String>,
    next_id: usize,
    /// Ids named that were gone when their turn came (deleted meanwhile).
    vanished: Vec<String>,
    /// With `all`: where the last read ended, and the newest id to take.
    all: bool,
    after: Option<String>,
    until: Option<(u64, u64)>,
    seen: usize,
    /// With `all`: stopped at [`MAX_READ`] entries with more left.
    cut: bool,
}

/// An entry id's two numbers, to compare in the stream's order.
fn id_order(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl<'a> Batches<'a> {
    /// Checks `pick`: exactly one of ids and all, every id well-formed and
    /// in the stream. Refused otherwise, before anything is done.
    async fn new(d: &'a DeadLetters, pick: &Pick) -> Result<Self, ActError> {
        if pick.all != pick.ids.is_empty() {
            return Err(ActError::Refused(
                "name the dead letters: ids, or all".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        // Each once, however often named: a letter named twice is sent once.
        let ids: Vec<String> = pick
            .ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect();
        for id in &ids {
            if !sluice_crds::dead_letter_action::is_entry_id(id) {
                return Err(ActError::Refused(format!(
                    "id {}: not an entry id (like 1767225600000-0)",
                    printable(id)
                )));
            }
        }
        let reading = |e: BackendError| ActError::Stopped {
            done: String::new(),
            error: format!("reading the dead letters: {e}"),
        };
        for id in &ids {
            if d.get(id).await.map_err(reading)?.is_none() {
                return Err(ActError::Refused(format!(
                    "{id}: not in the dead-letter stream"
                )));
            }
        }
        let until = if pick.all {
            d.replies
                .last_id(&d.keys.dead_letter())
                .await
                .map_err(reading)?
                .as_deref()
                .and_then(id_order)
        } else {
            None
        };
        Ok(Self {
            d,
            ids,
            next_id: 0,
            vanished: vec![],
            all: pick.all,
            after: None,
            until,
            seen: 0,
            cut: false,
        })
    }

    /// Says in `out` what was not acted on, once: ids gone since they were
    /// checked, and a stop at [`MAX_READ`].
    fn tell(&mut self, out: &mut String) {
        for id in self.vanished.drain(..) {
            let _ = writeln!(out, "{id}\tleft\tno longer in the dead-letter stream");
        }
        if std::mem::take(&mut self.cut) {
            let _ = writeln!(
                out,
                "… stopped after {MAX_READ} dead letters: run it again for the rest"
            );
        }
    }

    /// The next letters, `None` when there are no more; past `deadline`,
    /// stopped with `done` (what was done so far) kept.
    async fn next(
        &mut self,
        done: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<Vec<Listed>>, ActError> {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(ActError::Stopped {
                done: done.to_string(),
                error: OUT_OF_TIME.into(),
            });
        }
        let failed = |e: BackendError| ActError::Stopped {
            done: done.to_string(),
            error: format!("reading the dead letters: {e}"),
        };
        if !self.all {
            while let Some(id) = self.ids.get(self.next_id) {
                self.next_id += 1;
                match self.d.get(id).await.map_err(failed)? {
                    Some(l) => return Ok(Some(vec![l])),
                    None => self.vanished.push(id.clone()),
                }
            }
            return Ok(None);
        }
        // Nothing was there when the action began.
        let Some(until) = self.until else {
            return Ok(None);
        };
        if self.seen >= MAX_READ {
            self.cut = true;
            return Ok(None);
        }
        let page = self
            .d
            .page(self.after.as_deref(), MAX_READ - self.seen)
            .await
            .map_err(failed)?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.after = Some(last.id.clone());
        self.seen += page.len();
        let taken: Vec<Listed> = page
            .into_iter()
            .filter(|l| id_order(&l.id).is_some_and(|at| at <= until))
            .collect();
        Ok((!taken.is_empty()).then_some(taken))
    }
}

fn interface_of<'p>(
    plan: &'p Plan,
    name: Option<&str>,
) -> Result<&'p sluice_crds::InterfacePlan, ActError> {
    let http: Vec<_> = plan
        .interfaces
        .iter()
        .filter(|i| i.kind == sluice_crds::InterfaceKind::Http)
        .collect();
    match name {
        Some(n) => http.into_iter().find(|i| i.name == n).ok_or_else(|| {
            ActError::Refused(format!(
                "interface {}: the pipeline has no such http interface (only those store answers to fetch)",
                printable(n)
            ))
        }),
        None => match http.as_slice() {
            [only] => Ok(only),
            [] => Err(ActError::Refused(
                "the pipeline has no http interface to store the answers".into(),
            )),
            more => Err(ActError::Refused(format!(
                "name the interface whose answer store keeps the answers ({})",
                more.iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
    }
}

/// Connects to the pipeline's Redis with its key ring.
async fn open(t: &Target) -> anyhow::Result<DeadLetters> {
    let (Some(pipeline), Some(redis), Some(keys)) = (&t.pipeline, &t.redis, &t.keys) else {
        bail!("name the pipeline's Redis (--pipeline, --redis, --keys) or its ingress's --admin listener");
    };
    let (_, plan) = sluice_crds::load_manifest(pipeline)
        .with_context(|| format!("reading {}", pipeline.display()))?;
    if plan.backend != BackendKind::Redis {
        bail!(
            "pipeline {} does not run on redis backends: its dead letters live in its ingress process \
             (ask its admin listener: --admin ADDR --admin-token-file FILE)",
            plan.id
        );
    }
    let ring = SharedKeyRing::from_dir(keys)
        .with_context(|| format!("loading the key ring in {}", keys.display()))?;
    let cfg = RedisConfig::from_url(redis)?
        .with_ca_file(t.redis_ca_file.as_deref())?
        .with_password_file(t.redis_password_file.as_deref())?;
    let redis = RedisBackend::connect(cfg)
        .await
        .context("connecting to Redis")?;
    Ok(DeadLetters::on_redis(plan, ring, redis))
}

/// The listing: a header, then one line per entry (its payload under it
/// with `payloads`). Deliveries and reason are what the process that wrote
/// the entry recorded (`-` when nothing readable).
pub fn table(listed: &[Listed], payloads: bool, now: u64) -> String {
    let mut out = String::from("ID\tAGE\tGROUP\tNODE\tREQUEST-ID\tBYTES\tDELIVERIES\tREASON\n");
    for l in listed {
        let age = l.at_ms().map_or("?".into(), |at| {
            format!("{}s", now.saturating_sub(at) / 1000)
        });
        let (deliveries, reason) = match &l.note {
            Some(n) => (
                n.deliveries.to_string(),
                printable(&format!("{}: {}", n.error.code, n.error.message)),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = match &l.letter {
            Ok(x) => writeln!(
                out,
                "{}\t{age}\t{}\t{}\t{}\t{}\t{deliveries}\t{reason}",
                l.id,
                printable(&x.group),
                printable(&x.node),
                printable(&x.request_id),
                l.bytes
            ),
            // Nothing of a refused entry is shown, its note included.
            Err(why) => writeln!(
                out,
                "{}\t{age}\t-\t-\t-\t{}\t-\trefused: {}",
                l.id,
                l.bytes,
                why.reason()
            ),
        };
        if let (true, Ok(x)) = (payloads, &l.letter) {
            let _ = writeln!(out, "  {}", printable(&x.payload.to_string()));
        }
    }
    if listed.is_empty() {
        out.push_str("(no dead letters)\n");
    }
    out
}

/// `s` with control characters, and those that reorder text on a
/// terminal, written as `\u{…}` escapes.
pub fn printable(s: &str) -> String {
    let reorders = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    s.chars()
        .fold(String::with_capacity(s.len()), |mut out, c| {
            if c.is_control() || reorders(c) {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            } else {
                out.push(c);
            }
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letters::Letter;

    /// A request for `work` on cpu, as the ingress of the test pipeline signs it.
    fn request(d: &DeadLetters, rid: &str) -> sluice_platform::envelope::StreamEntry {
        use sluice_platform::envelope::{Envelope, Kind};
        let mut env = Envelope {
            kind: Kind::Request,
            pipeline: d.keys.pipeline().to_string(),
            dest: "cpu".into(),
            cid: "c".into(),
            rid: rid.into(),
            trace: None,
            ts: 0,
            nonce: String::new(),
            deadline: now_ms() + 5_000,
            attempt: 1,
            node: Some("work".into()),
            plan: None,
            reply_to: Some("gone".into()),
            live: None,
            seq: None,
            last_seq: None,
            payload: json!({"rid": rid}),
            error: None,
        };
        d.signer.sign(&mut env).unwrap()
    }

    #[tokio::test]
    async fn all_takes_the_letters_there_when_it_began_not_those_written_since() {
        let d = crate::dead_letters::tests::letters();
        let dlq = d.keys.dead_letter();
        for rid in ["a", "b"] {
            d.queue.push(&dlq, request(&d, rid)).await.unwrap();
        }
        let pick = Pick {
            ids: vec![],
            all: true,
        };
        let mut batches = Batches::new(&d, &pick).await.unwrap();
        // Written after the action began (a redriven letter failing again).
        d.queue.push(&dlq, request(&d, "c")).await.unwrap();
        let mut taken = vec![];
        while let Some(batch) = batches.next("", None).await.unwrap() {
            taken.extend(batch.into_iter().map(|l| l.letter.unwrap().request_id));
        }
        assert_eq!(taken, ["a", "b"]);
        // The same through the action: one purged set, the newer one left.
        let out = act(
            &d,
            Act::Purge {
                pick,
                dry_run: false,
            },
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            out, "deleted 3 dead letter(s)\n",
            "a new action takes all three"
        );
        assert!(d.list(10, false).await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn a_named_letter_gone_since_the_check_is_said_to_be_left() {
        let d = crate::dead_letters::tests::letters();
        let dlq = d.keys.dead_letter();
        let a = d.queue.push(&dlq, request(&d, "a")).await.unwrap();
        let b = d.queue.push(&dlq, request(&d, "b")).await.unwrap();
        let pick = Pick {
            ids: vec![a.clone(), b.clone()],
            all: false,
        };
        let mut batches = Batches::new(&d, &pick).await.unwrap();
        d.purge(std::slice::from_ref(&b), false).await.unwrap();
        let mut taken = vec![];
        while let Some(batch) = batches.next("", None).await.unwrap() {
            taken.extend(batch.into_iter().map(|l| l.id));
        }
        assert_eq!(taken, [a]);
        let mut out = String::new();
        batches.tell(&mut out);
        assert_eq!(
            out,
            format!("{b}\tleft\tno longer in the dead-letter stream\n")
        );
        batches.tell(&mut out);
        assert_eq!(out.lines().count(), 1, "said once");
    }

    #[tokio::test]
    async fn a_listing_keeps_payloads_only_when_asked() {
        let d = crate::dead_letters::tests::letters();
        d.queue
            .push(&d.keys.dead_letter(), request(&d, "a"))
            .await
            .unwrap();
        let (plain, cut) = d.list(10, false).await.unwrap();
        assert!(!cut);
        assert_eq!(
            plain[0].letter.as_ref().unwrap().payload,
            serde_json::Value::Null
        );
        let (full, _) = d.list(10, true).await.unwrap();
        assert_eq!(
            full[0].letter.as_ref().unwrap().payload,
            json!({"rid": "a"})
        );
    }

    #[tokio::test]
    async fn past_its_deadline_an_action_stops_and_says_how_far_it_got() {
        let d = crate::dead_letters::tests::letters();
        d.queue
            .push(&d.keys.dead_letter(), request(&d, "a"))
            .await
            .unwrap();
        let pick = Pick {
            ids: vec![],
            all: true,
        };
        let past = tokio::time::Instant::now();
        match act(
            &d,
            Act::Purge {
                pick,
                dry_run: false,
            },
            Some(past),
        )
        .await
        {
            Err(ActError::Stopped { done, error }) => {
                assert_eq!(done, "deleted 0 dead letter(s)\n");
                assert_eq!(error, OUT_OF_TIME);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.list(10, false).await.unwrap().0.len(), 1, "nothing done");
    }
    use serde_json::json;
    use sluice_platform::{DeadLetterNote, Rejection, ReplyError};

    #[test]
    fn what_a_dead_letter_says_is_printed_escaped() {
        assert_eq!(
            printable("a\u{1b}[2Jb\u{202e}c\n"),
            "a\\u{1b}[2Jb\\u{202e}c\\u{a}"
        );
        let listed = [
            Listed {
                id: "1000-0".into(),
                bytes: 420,
                note: Some(DeadLetterNote::new(
                    "io",
                    5,
                    &ReplyError::new("retries_exhausted", "http: cannot connect\u{1b}[1m"),
                )),
                letter: Ok(Letter {
                    group: "io".into(),
                    node: "fetch".into(),
                    request_id: "r\u{1b}]0;owned\u{7}".into(),
                    payload: json!({"note": "\u{202e}evil"}),
                }),
            },
            Listed {
                id: "2000-0".into(),
                bytes: 64,
                note: None,
                letter: Err(Rejection::BadMac),
            },
        ];
        let t = table(&listed, true, 5_000);
        assert!(
            !t.contains('\u{1b}') && !t.contains('\u{202e}') && !t.contains('\u{7}'),
            "{t}"
        );
        assert_eq!(
            t,
            "ID\tAGE\tGROUP\tNODE\tREQUEST-ID\tBYTES\tDELIVERIES\tREASON\n\
             1000-0\t4s\tio\tfetch\tr\\u{1b}]0;owned\\u{7}\t420\t5\t\
             retries_exhausted: http: cannot connect\\u{1b}[1m\n  {\"note\":\"\\u{202e}evil\"}\n\
             2000-0\t3s\t-\t-\t-\t64\t-\trefused: bad_mac\n"
        );
        assert_eq!(
            table(&[], false, 0),
            "ID\tAGE\tGROUP\tNODE\tREQUEST-ID\tBYTES\tDELIVERIES\tREASON\n(no dead letters)\n"
        );
    }
}

//! `sluice-web-ingress dlq list|redrive|purge`: a pipeline's dead letters
//! on Redis, for whoever runs it by hand and holds its key ring (on a
//! cluster the key ring stays with the operator). What is done is in
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

use crate::dead_letters::{Answering, DeadLetters, Listed, Redriven, MAX_READ};

/// A pipeline's dead letters (Redis backends), with its key ring.
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
        /// The http interface whose answer store keeps the answers and whose
        /// asyncTimeout is their deadline [default: the only http interface]
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
        /// Who may fetch the answers, for an interface that identifies its
        /// callers [default: the anonymous caller]
        #[arg(long, value_name = "NAME")]
        caller: Option<String>,
        /// Send a letter whose node now runs on another group there (by
        /// default it is left: whoever could write it may not send to that
        /// group)
        #[arg(long)]
        follow_moved: bool,
        /// Say what would be sent; send nothing
        #[arg(long)]
        dry_run: bool,
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

/// The pipeline and how to reach it.
#[derive(Debug, Args)]
pub struct Target {
    /// StreamPipeline manifest of the pipeline
    #[arg(
        long,
        value_name = "FILE",
        env = "SLUICE_PIPELINE",
        hide_env_values = true
    )]
    pub pipeline: PathBuf,
    /// Its Redis URL
    #[arg(
        long,
        value_name = "URL",
        env = "SLUICE_REDIS_URL",
        hide_env_values = true
    )]
    pub redis: String,
    /// Its key ring (as written by `keygen`): redrive signs with the
    /// request key of each dead letter's group
    #[arg(
        long,
        value_name = "DIR",
        env = "SLUICE_KEYS_DIR",
        hide_env_values = true
    )]
    pub keys: PathBuf,
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

/// Runs `act` on `d`: what it did, as text (one line per letter).
///
/// # Errors
/// [`ActError`].
pub async fn act(d: &DeadLetters, act: Act) -> Result<String, ActError> {
    let backend = |what: &str, e: BackendError| ActError::Stopped {
        done: String::new(),
        error: format!("{what}: {e}"),
    };
    match act {
        Act::List { limit, payloads } => {
            let listed = d
                .list(limit)
                .await
                .map_err(|e| backend("reading the dead letters", e))?;
            Ok(table(&listed, payloads, now_ms()))
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
            let chosen = chosen(d, &pick).await?;
            let how = Answering {
                interface: it,
                caller: &caller,
                follow_moved,
            };
            let (done, stopped) = d.redrive(&chosen, &how, dry_run).await;
            let mut out = String::new();
            for r in &done {
                let _ = match r {
                    Redriven::Sent { id, location } => writeln!(out, "{id}\tsent\t{location}"),
                    Redriven::WouldSend { id } => writeln!(out, "{id}\twould be sent"),
                    Redriven::Refused { id, why } => {
                        writeln!(out, "{id}\tleft\t{}", printable(why))
                    }
                };
            }
            match stopped {
                Some(e) => Err(ActError::Stopped {
                    error: format!("stopped after {} of {}: {e}", done.len(), chosen.len()),
                    done: out,
                }),
                None => Ok(out),
            }
        }
        Act::Purge { pick, dry_run } => {
            let ids: Vec<String> = chosen(d, &pick).await?.into_iter().map(|l| l.id).collect();
            if dry_run {
                return Ok(format!("would delete {} dead letter(s)\n", ids.len()));
            }
            let n = d
                .purge(&ids, false)
                .await
                .map_err(|e| backend("deleting", e))?;
            Ok(format!("deleted {n} dead letter(s)\n"))
        }
    }
}

/// Runs `action`, printing to stdout.
///
/// # Errors
/// Bad flags or manifest, an unreachable Redis, or a failure midway (what
/// was done before it is printed first).
pub async fn run(action: DlqAction) -> anyhow::Result<()> {
    let (target, act_on) = match action {
        DlqAction::List {
            target,
            limit,
            payloads,
        } => (target, Act::List { limit, payloads }),
        DlqAction::Redrive {
            target,
            pick,
            interface,
            caller,
            follow_moved,
            dry_run,
        } => (
            target,
            Act::Redrive {
                pick,
                interface,
                caller,
                follow_moved,
                dry_run,
            },
        ),
        DlqAction::Purge {
            target,
            pick,
            dry_run,
        } => (target, Act::Purge { pick, dry_run }),
    };
    let d = open(&target).await?;
    match act(&d, act_on).await {
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

/// The dead letters `pick` names, as they are now; an id that is not there
/// is refused (nothing is done).
async fn chosen(d: &DeadLetters, pick: &Pick) -> Result<Vec<Listed>, ActError> {
    // Exactly one of the two.
    if pick.all != pick.ids.is_empty() {
        return Err(ActError::Refused(
            "name the dead letters: ids, or all".into(),
        ));
    }
    for id in &pick.ids {
        if !sluice_crds::dead_letter_action::is_entry_id(id) {
            return Err(ActError::Refused(format!(
                "id {}: not an entry id (like 1767225600000-0)",
                printable(id)
            )));
        }
    }
    let all = d.list(MAX_READ).await.map_err(|e| ActError::Stopped {
        done: String::new(),
        error: format!("reading the dead letters: {e}"),
    })?;
    if pick.all {
        return Ok(all);
    }
    // Each once, however often named: a letter named twice is sent once.
    let mut seen = std::collections::HashSet::new();
    pick.ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .map(|id| {
            all.iter()
                .find(|l| l.id == *id)
                .cloned()
                .ok_or_else(|| ActError::Refused(format!("{id}: not in the dead-letter stream")))
        })
        .collect()
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
    let (_, plan) = sluice_crds::load_manifest(&t.pipeline)
        .with_context(|| format!("reading {}", t.pipeline.display()))?;
    if plan.backend != BackendKind::Redis {
        bail!(
            "pipeline {} does not run on redis backends: its dead letters live in its ingress process",
            plan.id
        );
    }
    let ring = SharedKeyRing::from_dir(&t.keys)
        .with_context(|| format!("loading the key ring in {}", t.keys.display()))?;
    let cfg = RedisConfig::from_url(&t.redis)?
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
    use serde_json::json;
    use sluice_platform::{DeadLetterNote, Rejection, ReplyError};

    #[test]
    fn stream_ids_are_two_decimal_numbers() {
        for ok in ["0-1", "1767225600000-0", "1-18446744073709551615"] {
            assert!(is_stream_id(ok), "{ok}");
        }
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-1-1",
            "1 -1",
            "+1-1",
            "123456789012345678901-0",
        ] {
            assert!(!is_stream_id(bad), "{bad}");
        }
    }

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

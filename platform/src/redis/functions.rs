//! sluice's Redis function library (`functions.lua`, library `sluice_1`):
//! a worker's hand-off as one command, `FCALL sluice_1_hand_off`, instead
//! of `MULTI`, one `XADD` per forward, `XACK`, `XDEL` and `EXEC`.
//!
//! ```text
//! complete_all ─▶ library usable? ── no ──▶ MULTI … EXEC
//!                   │ yes
//!                   ▼
//!                 FCALL ─▶ answered ─▶ as EXEC's answers (same shape, same failures)
//!                   │ "Function not found"
//!                   ▼
//!                 FUNCTION LOAD ─▶ loaded (or loaded by another) ─▶ FCALL again
//!                   │ refused (NOPERM, no FUNCTION in this Redis)
//!                   ▼
//!                 not used for RETRY ─▶ MULTI … EXEC
//! ```
//!
//! The function runs its commands as `EXEC` does — every one even when
//! one before it failed — and answers what `EXEC` would, so a failure is
//! judged by the same read-back ([`super::queue`]'s `failed_hand_off`).
//! It is called with the caller's own ACL user, so it grants nothing: a
//! user allowed `FCALL` but not `XADD` to a stream still cannot write it.
//! It checks the whole call before running any command, and every loop is
//! bounded by the call's arguments.
//!
//! In a managed Redis the operator loads the library as `admin`
//! (`FUNCTION LOAD REPLACE`) and no other user may; elsewhere the first
//! process whose user may loads it. Where no one may, or the Redis is
//! older than 7.0, hand-offs use `MULTI` … `EXEC` and the library is tried
//! again after [`RETRY`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::error::Error as FredError;
use fred::types::Value;

use super::backend::{is_reply, RedisBackend};

/// The library's source, as `FUNCTION LOAD` takes it.
pub const LIBRARY: &str = include_str!("functions.lua");
/// The library's name (versioned: a changed function is a new library, so
/// processes of two versions can share one Redis).
pub const LIBRARY_NAME: &str = "sluice_1";
/// The hand-off function.
const HAND_OFF: &str = "sluice_1_hand_off";

/// How long the library is not tried again after it could not be used.
const RETRY: Duration = Duration::from_secs(30);

/// Whether this process calls the library, per Redis.
#[derive(Debug, Default)]
pub(super) struct Library {
    /// Until when (ms since the backend's epoch) it is not tried; 0: tried.
    off_until: AtomicU64,
}

impl Library {
    fn usable(&self, now_ms: u64) -> bool {
        now_ms >= self.off_until.load(Ordering::Relaxed)
    }

    fn set_off(&self, now_ms: u64) {
        let until = now_ms.saturating_add(u64::try_from(RETRY.as_millis()).unwrap_or(u64::MAX));
        self.off_until.store(until, Ordering::Relaxed);
    }
}

/// One `XADD` of a hand-off: its stream and its arguments after the key.
pub(super) type Xadd<'a> = (&'a str, Vec<Value>);

/// Whether `e` says the function is not there (never loaded, or lost
/// with a Redis restarted without persistence).
fn missing(e: &FredError) -> bool {
    is_reply(e, "ERR Function not found")
}

/// Whether `e` says this Redis or this user cannot call functions at all
/// (nothing ran): a Redis older than 7.0, or an ACL without `FCALL`.
fn refused(e: &FredError) -> bool {
    let d = e.details().to_ascii_lowercase();
    (d.starts_with("err unknown command") || d.starts_with("noperm")) && d.contains("'fcall'")
}

fn text(s: &str) -> Value {
    Value::from(s)
}

fn count(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn hand_off_args(stream: &str, group: &str, ids: &[&str], xadds: &[Xadd<'_>]) -> Vec<Value> {
    let size = 5 + ids.len() + xadds.iter().map(|(_, a)| a.len() + 2).sum::<usize>();
    let mut args = Vec::with_capacity(size);
    args.extend([
        text(HAND_OFF),
        count(1),
        text(stream),
        text(group),
        count(ids.len()),
    ]);
    args.extend(ids.iter().map(|id| text(id)));
    for (to, xadd) in xadds {
        args.push(text(to));
        args.push(count(xadd.len()));
        args.extend(xadd.iter().cloned());
    }
    args
}

impl RedisBackend {
    /// A hand-off through the library: the `XADD`s, then `XACK` and `XDEL`
    /// of `ids` in `stream`. `Ok(None)` when the library cannot be used
    /// here (nothing ran: use `MULTI` … `EXEC`), else `EXEC`'s answers or
    /// the error it would have given.
    pub(super) async fn hand_off_function(
        &self,
        stream: &str,
        group: &str,
        ids: &[&str],
        xadds: &[Xadd<'_>],
    ) -> Result<Option<Vec<Value>>, FredError> {
        if !self.library.usable(self.now_ms()) {
            return Ok(None);
        }
        let call = || self.call("FCALL", stream, hand_off_args(stream, group, ids, xadds));
        match call().await {
            Ok(answers) => return Ok(Some(answers.into_array())),
            Err(e) if refused(&e) => {
                self.library.set_off(self.now_ms());
                return Ok(None);
            }
            Err(e) if !missing(&e) => return Err(e),
            Err(_) => {}
        }
        if !self.load_library().await {
            self.library.set_off(self.now_ms());
            return Ok(None);
        }
        match call().await {
            Ok(answers) => Ok(Some(answers.into_array())),
            Err(e) if missing(&e) || refused(&e) => {
                self.library.set_off(self.now_ms());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `FUNCTION LOAD` of the library, unless it is there already; whether
    /// it is there now.
    async fn load_library(&self) -> bool {
        match self
            .call("FUNCTION", LIBRARY_NAME, vec![text("LOAD"), text(LIBRARY)])
            .await
        {
            Ok(_) => true,
            Err(e) => e.details().contains("already exists"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_names_itself_and_its_function_as_the_code_calls_them() {
        assert!(LIBRARY.starts_with(&format!("#!lua name={LIBRARY_NAME}\n")));
        assert!(LIBRARY.contains(&format!("redis.register_function('{HAND_OFF}', hand_off)")));
    }

    #[test]
    fn arguments_count_each_xadds_own() {
        let xadds = vec![
            (
                "q:b",
                vec![text("NOMKSTREAM"), text("*"), text("f"), text("v")],
            ),
            ("r:x", vec![text("*"), text("f"), text("v")]),
        ];
        let args = hand_off_args("q:a", "sluice", &["1-0", "2-0"], &xadds);
        let texts: Vec<String> = args
            .iter()
            .map(|v| v.as_string().unwrap_or_default())
            .collect();
        assert_eq!(
            texts,
            [
                HAND_OFF,
                "1",
                "q:a",
                "sluice",
                "2",
                "1-0",
                "2-0",
                "q:b",
                "4",
                "NOMKSTREAM",
                "*",
                "f",
                "v",
                "r:x",
                "3",
                "*",
                "f",
                "v"
            ]
        );
    }

    #[test]
    fn only_a_missing_fcall_or_one_the_user_may_not_run_turns_the_library_off() {
        use fred::error::ErrorKind;
        let e = |s: &str| FredError::new(ErrorKind::Unknown, s.to_string());
        assert!(refused(&e(
            "ERR unknown command 'FCALL', with args beginning with: "
        )));
        assert!(refused(&e(
            "NOPERM User group-a has no permissions to run the 'fcall' command"
        )));
        assert!(!refused(&e(
            "NOPERM User group-a has no permissions to run the 'xadd' command"
        )));
        assert!(!refused(&e(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        assert!(missing(&e("ERR Function not found")));
        assert!(!missing(&e("ERR sluice_1_hand_off: expected one key")));
    }
}

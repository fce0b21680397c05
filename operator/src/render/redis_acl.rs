//! The ACL users of managed Redis: one per role, each limited to the keys
//! and commands that role uses (DESIGN §6, docs/operator.md "Redis users").
//!
//! ```text
//! user          who                         keys (prefix sluice:{ns/p}:)                 commands
//! ingress       web pods                    q:<first hops> (write), dlq (write)           XADD  (+ MULTI EXEC DISCARD)
//!                                           r:*                                           EXISTS XADD PEXPIRE XREAD XTRIM DEL
//!                                           q:<groups on its interfaces' paths> (read)    XLEN XPENDING MEMORY USAGE
//!                                           i:*                                           SET DEL
//!                                           paused (read)                                 GET
//! group-<g>     worker pods of group g      q:<g>                                         XREADGROUP XACK XCLAIM XAUTOCLAIM XDEL
//!                                                                                         XPENDING XGROUP CREATE XLEN XINFO STREAM
//!                                                                                         MEMORY USAGE
//!                                           q:<groups its edges lead to>, dlq (write)     XADD
//!                                           r:* (write; only if g ends an interface)      XADD
//!                                           n:<g>:*                                       SET GET
//!                                           paused (read)                                 GET
//!                                           none                                          MULTI EXEC DISCARD
//! autoscaler    the operator's autoscaler   q:* (read)                                    XLEN XPENDING XINFO STREAM
//!               and queue observer          dlq (read)                                    XLEN
//! keda          KEDA's scaler               q:* (read)                                    XLEN XPENDING XINFO GROUPS
//! admin         the operator only           none                                          ACL SETUSER|DELUSER|USERS, CONFIG GET|SET (TLS),
//!                                                                                         MULTI EXEC DISCARD
//!                                           paused                                        SET DEL
//!                                           dlq                                           EXISTS XREAD XREVRANGE XDEL
//!                                           q:* (write)                                   XADD
//!                                           r:*                                           EXISTS XADD PEXPIRE
//! probe         Redis's own probes          none                                          PING
//! default       nobody                      off, no password, no command
//! ```
//!
//! Every user may `PING` and `CLIENT ID`. No user gets a keyspace command that rewrites a
//! queue's history (`DEL`, `RENAME`, `XSETID`, `XGROUP DESTROY|SETID`,
//! `XTRIM`, …) nor anything `@admin`/`@dangerous` except `admin`'s ACL
//! subcommands and `CONFIG GET|SET`, and none runs scripts (`EVAL`, `FCALL`: any Lua can loop
//! forever and freeze Redis for every other user): a compromised worker can read and write only its
//! own queue, append to the queues its edges lead to, and answer callers.
//!
//! Passwords are random per role and stored in the `P-redis` Secret under
//! `<user>.password`; the config file carries only their SHA-256
//! (`#<hex>`), and each pod's environment only its own role's password.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use sluice_crds::Plan;
use sluice_platform::keys::Keys;

/// A role that connects to managed Redis.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Ingress,
    /// The worker pods of one group.
    Group(String),
    /// The operator's builtin autoscaler.
    Autoscaler,
    /// KEDA's `redis-streams` scaler (its password is in a Secret KEDA reads).
    Keda,
    Admin,
    Probe,
}

impl Role {
    /// What every worker group's user name starts with.
    pub const GROUP_PREFIX: &'static str = "group-";

    /// The Redis user name.
    pub fn user(&self) -> String {
        match self {
            Role::Ingress => "ingress".into(),
            Role::Group(g) => format!("{}{g}", Self::GROUP_PREFIX),
            Role::Autoscaler => "autoscaler".into(),
            Role::Keda => "keda".into(),
            Role::Admin => "admin".into(),
            Role::Probe => "probe".into(),
        }
    }

    /// Key of this role's password in the `P-redis` Secret.
    pub fn password_key(&self) -> String {
        format!("{}.password", self.user())
    }
}

/// Key in the `P-redis` Secret holding the autoscaler's user name, for
/// KEDA's TriggerAuthentication (which takes the name from a Secret).
pub const KEDA_USERNAME_KEY: &str = "keda.username";
/// [`Role::Keda`]'s password key, for the same.
pub const KEDA_PASSWORD_KEY: &str = "keda.password";

/// One ACL user: its role and its rules after `on #<hash>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub role: Role,
    pub rules: Vec<String>,
}

impl User {
    /// The `user` line of redis.conf for this user, accepting each of
    /// `passwords` (two while a rotation is under way).
    pub fn conf_line(&self, passwords: &[&str]) -> String {
        let mut words = vec!["user".to_string(), self.role.user(), "on".into()];
        words.extend(hashes(passwords));
        words.extend(self.rules.iter().cloned());
        words.join(" ")
    }

    /// The arguments of `ACL SETUSER` that make a live user exactly this
    /// one, accepting each of `passwords` (`reset` first, so nothing
    /// granted before survives, an old password included).
    pub fn setuser_args(&self, passwords: &[&str]) -> Vec<String> {
        let mut args = vec![self.role.user(), "reset".into(), "on".into()];
        args.extend(hashes(passwords));
        args.extend(self.rules.iter().cloned());
        args
    }
}

/// The `#<hash>` rules of `passwords`, sorted: the same set gives the same
/// rules whichever is current (a rotation's promotion changes nothing
/// live).
fn hashes(passwords: &[&str]) -> Vec<String> {
    let mut h: Vec<String> = passwords
        .iter()
        .map(|p| format!("#{}", password_hash(p)))
        .collect();
    h.sort();
    h.dedup();
    h
}

/// Hex SHA-256 of a password, as Redis's `#<hash>` rule takes it.
pub fn password_hash(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The line that turns the `default` user off: no password (`resetpass`
/// drops `nopass`) and no command, so it authenticates nobody even where
/// protected mode would otherwise let a loopback client in.
pub const DEFAULT_USER_LINE: &str = "user default off resetpass resetkeys resetchannels -@all";

/// Every role of a plan's pipeline, sorted: ingress, one per worker group,
/// autoscaler, admin, probe.
pub fn roles(plan: &Plan) -> Vec<Role> {
    let mut roles = vec![Role::Ingress];
    roles.extend(plan.worker_groups().map(|g| Role::Group(g.name.clone())));
    roles.extend([Role::Autoscaler, Role::Keda, Role::Admin, Role::Probe]);
    roles
}

/// The users of a plan's pipeline, in [`roles`] order; `tls` when managed
/// Redis speaks TLS (the admin then may reload its certificate).
pub fn users(plan: &Plan, tls: bool) -> Vec<User> {
    let keys = Keys::new(&plan.id.namespace, &plan.id.name);
    roles(plan)
        .into_iter()
        .map(|role| {
            let rules = rules(plan, &keys, &role, tls);
            User { role, rules }
        })
        .collect()
}

/// Redis key pattern special characters are `* ? [ ] \`; pipeline,
/// namespace and group names are DNS names and contain none, but escape
/// anyway so a pattern always means the literal name.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn selector(commands: &[&str], patterns: &[String]) -> String {
    let mut words: Vec<String> = commands.iter().map(|c| format!("+{c}")).collect();
    words.extend(patterns.iter().cloned());
    format!("({})", words.join(" "))
}

fn rules(plan: &Plan, keys: &Keys, role: &Role, tls: bool) -> Vec<String> {
    let queue = |g: &str| lit(&keys.queue(g));
    let write = |k: String| format!("%W~{k}");
    let read = |k: String| format!("%R~{k}");
    let replies = format!("{}*", lit(&keys.reply("")));
    // Every runtime process reads whether the pipeline is paused.
    let reads_pause = || selector(&["get"], &[read(lit(&keys.paused()))]);
    let mut out = vec![
        "resetkeys".to_string(),
        "resetchannels".into(),
        "-@all".into(),
        "+ping".into(),
        // The Redis client asks its blocking connections' ids (to unblock
        // them); harmless.
        "+client|id".into(),
    ];
    match role {
        Role::Ingress => {
            // MULTI for opening its reply stream; no EVAL.
            out.extend(["+multi".into(), "+exec".into(), "+discard".into()]);
            let mut sends: Vec<String> = sends_to(plan, &plan.ingress_group)
                .iter()
                .map(|g| write(queue(g)))
                .collect();
            sends.push(write(lit(&keys.dead_letter())));
            out.push(selector(&["xadd"], &sends));
            out.push(selector(
                &["exists", "xadd", "pexpire", "xread", "xtrim", "del"],
                &[format!("~{replies}")],
            ));
            let watched: BTreeSet<&str> = plan
                .interfaces
                .iter()
                .flat_map(|i| i.path_groups.iter().map(String::as_str))
                .collect();
            if !watched.is_empty() {
                let reads: Vec<String> = watched.iter().map(|g| read(queue(g))).collect();
                out.push(selector(&["xlen", "xpending", "memory|usage"], &reads));
            }
            // Idempotency keys: claimed with SET NX GET PX, released with
            // DEL when the request could not be queued.
            out.push(selector(
                &["set", "del"],
                &[format!(
                    "~{}*",
                    lit(&keys.idempotency("", ""))
                        .strip_suffix(':')
                        .unwrap_or_default()
                )],
            ));
            out.push(reads_pause());
        }
        Role::Group(g) => {
            out.extend(["+multi".into(), "+exec".into(), "+discard".into()]);
            out.push(selector(
                &[
                    "xreadgroup",
                    "xack",
                    // A request of another plan generation, handed back.
                    "xadd",
                    "xclaim",
                    "xautoclaim",
                    "xdel",
                    "xpending",
                    "xgroup|create",
                    "xlen",
                    "xinfo|stream",
                    "memory|usage",
                ],
                &[format!("~{}", queue(g))],
            ));
            let mut sends: Vec<String> = sends_to(plan, g)
                .iter()
                .map(|to| write(queue(to)))
                .collect();
            sends.push(write(lit(&keys.dead_letter())));
            // A group on some interface's path may answer: with the final
            // output when it ends the interface, with an error (a failed
            // node, a dead-lettered request) wherever the request stands.
            if !plan.key_needs(g).reply.is_empty() {
                sends.push(write(replies.clone()));
            }
            out.push(selector(&["xadd"], &sends));
            out.push(selector(
                &["set", "get"],
                // `…:n:<g>:*` (the key ends `<g>:<kid>:<nonce>`): the colon
                // kept, or `…:n:<g>*` would match a group `<g>-other` too.
                &[format!(
                    "~{}*",
                    lit(&keys.nonce(g, "", ""))
                        .strip_suffix(':')
                        .unwrap_or_default()
                )],
            ));
            out.push(reads_pause());
        }
        // XINFO STREAM shows the first and last entries: the operator may
        // see them (it holds the keys anyway), KEDA may not.
        Role::Autoscaler => {
            out.push(selector(
                &["xlen", "xpending", "xinfo|stream"],
                &[read(format!("{}*", lit(&keys.queue(""))))],
            ));
            // How many dead letters, for status (`crate::observe`).
            out.push(selector(&["xlen"], &[read(lit(&keys.dead_letter()))]));
        }
        Role::Keda => {
            out.push(selector(
                &["xlen", "xpending", "xinfo|groups"],
                &[read(format!("{}*", lit(&keys.queue(""))))],
            ));
        }
        Role::Admin => {
            out.extend([
                "+acl|setuser".into(),
                "+acl|deluser".into(),
                "+acl|users".into(),
            ]);
            // Pauses and resumes the pipeline (`spec.paused`).
            out.push(selector(
                &["set", "del"],
                &[format!("~{}", lit(&keys.paused()))],
            ));
            // Dead-letter actions: reads the stream and deletes from it,
            // sends a redriven request to a group's queue and opens the
            // answer store its answer is kept in.
            out.extend(["+multi".into(), "+exec".into(), "+discard".into()]);
            out.push(selector(
                &["exists", "xread", "xrevrange", "xdel"],
                &[format!("~{}", lit(&keys.dead_letter()))],
            ));
            out.push(selector(&["xadd"], &[write(format!("{}*", queue("")))]));
            out.push(selector(
                &["exists", "xadd", "pexpire"],
                &[format!("~{replies}")],
            ));
            if tls {
                // To load a renewed TLS certificate: read the paths, set
                // them again. Redis cannot limit the arguments; with
                // `enable-protected-configs no` it refuses `dir` and
                // `dbfilename` (writing files anywhere) to everyone, and
                // the rest this user could do with ACL SETUSER anyway.
                out.extend(["+config|get".into(), "+config|set".into()]);
            }
        }
        Role::Probe => {}
    }
    out
}

/// The groups whose queues a process running `group` appends to: those it
/// holds a request key for (it signs for them, [`Plan::key_needs`]), its own
/// excepted — a node's successor in the same group runs in the same
/// process, and a worker verifies with its own key but never sends to
/// itself. For the ingress: the interfaces' entry groups and where its own
/// nodes lead.
fn sends_to(plan: &Plan, group: &str) -> BTreeSet<String> {
    let mut to = plan.key_needs(group).request;
    to.remove(group);
    to
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::orders_redis;
    use sluice_crds::{compile, PipelineId};

    fn rules_of(role: &Role) -> String {
        let sp = orders_redis();
        let id = PipelineId {
            namespace: sp.metadata.namespace.clone().unwrap(),
            name: sp.metadata.name.clone().unwrap(),
        };
        let plan = compile(id, &sp.spec).unwrap();
        users(&plan, true)
            .into_iter()
            .find(|u| u.role == *role)
            .map(|u| u.rules.join(" "))
            .unwrap()
    }

    #[test]
    fn the_runtime_reads_the_pause_and_only_the_admin_writes_it() {
        let key = "sluice:{demo/orders-redis}:paused";
        for role in [Role::Ingress, Role::Group("cpu".into())] {
            let r = rules_of(&role);
            assert!(r.contains(&format!("(+get %R~{key})")), "{role:?}: {r}");
        }
        assert!(rules_of(&Role::Admin).contains(&format!("(+set +del ~{key})")));
        for role in [Role::Autoscaler, Role::Keda, Role::Probe] {
            assert!(!rules_of(&role).contains(key), "{role:?}");
        }
    }

    #[test]
    fn a_groups_nonces_are_its_own_and_not_a_longer_namesakes() {
        let cpu = rules_of(&Role::Group("cpu".into()));
        assert!(
            cpu.contains("(+set +get ~sluice:{demo/orders-redis}:n:cpu:*)"),
            "{cpu}"
        );
    }

    #[test]
    fn every_role_starts_from_nothing_and_only_the_operator_reads_entries() {
        for role in [
            Role::Ingress,
            Role::Group("io".into()),
            Role::Autoscaler,
            Role::Keda,
            Role::Admin,
            Role::Probe,
        ] {
            let r = rules_of(&role);
            assert!(
                r.starts_with("resetkeys resetchannels -@all +ping"),
                "{role:?}: {r}"
            );
            // The admin reloads the TLS certificate with CONFIG GET|SET,
            // and only with TLS.
            if role != Role::Admin {
                assert!(!r.contains("+config"), "{role:?}: {r}");
            }
            for never in [
                "+eval",
                "+fcall",
                "+function",
                "+flushall",
                "+keys",
                "+del ~sluice:{demo/orders-redis}:q",
                "+xsetid",
                "+@",
            ] {
                assert!(!r.contains(never), "{role:?} has {never}: {r}");
            }
            // XTRIM: only the ingress, only on reply streams (it trims the
            // replies it has read).
            if r.contains("+xtrim") {
                assert_eq!(role, Role::Ingress, "{r}");
                assert_eq!(r.matches("+xtrim").count(), 1, "{r}");
                assert!(
                    r.contains("+xtrim +del ~sluice:{demo/orders-redis}:r:*)"),
                    "{r}"
                );
            }
        }
        let plan = compile(
            PipelineId {
                namespace: "demo".into(),
                name: "orders-redis".into(),
            },
            &orders_redis().spec,
        )
        .unwrap();
        let plain_admin = users(&plan, false)
            .into_iter()
            .find(|u| u.role == Role::Admin)
            .unwrap()
            .rules
            .join(" ");
        assert!(!plain_admin.contains("+config"), "{plain_admin}");
        // XINFO STREAM shows entries: the operator's autoscaler only.
        assert!(rules_of(&Role::Autoscaler).contains("+xinfo|stream"));
        for role in [Role::Keda, Role::Ingress] {
            assert!(!rules_of(&role).contains("+xinfo|stream"), "{role:?}");
        }
        assert!(
            !rules_of(&Role::Keda).contains("%W~"),
            "KEDA writes nothing"
        );
    }
}

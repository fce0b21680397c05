//! The `DeadLetterAction` resource: a person's request to list, redrive or
//! purge a pipeline's dead letters, carried out by the operator
//! (docs/operator.md "Dead letters").
//!
//! ```text
//! kubectl sluice dlq … ─▶ create DeadLetterAction (RBAC: create on deadletteractions)
//!   operator (leader) ─▶ status.phase Running ─▶ key ring + Redis of the pipeline ─▶ act
//!                     ─▶ status.phase Succeeded|Failed, status.output; Events (what was done;
//!                        who asked is in the API server's audit log)
//! ```
//!
//! Redriving signs requests, which needs the pipeline's key ring: the
//! operator holds it, the person asking does not. Whoever may create these
//! objects in a namespace may redrive and purge the dead letters of its
//! pipelines; whoever may read them may read what they list (payloads, when
//! asked for). Its spec cannot change once created (a CEL rule), and it is
//! acted on once.
//!
//! This module holds the shape and its bounds only; it must not act.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::MAX_PIPELINE_NAME;
use crate::names::{is_dns1035_label, is_dns_label};

/// Most dead letters one action names by id.
pub const MAX_IDS: usize = 1000;
/// Most dead letters one listing shows.
pub const MAX_LIST: u32 = 1000;
/// Listing length when `limit` is not set.
pub const DEFAULT_LIST: u32 = 100;
/// Most bytes of `status.output` (a listing with payloads is cut there,
/// with a last line saying so).
pub const MAX_OUTPUT: usize = 256 * 1024;
/// Longest caller name.
pub const MAX_CALLER: usize = 256;

/// What to do with a pipeline's dead letters.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "DeadLetterAction",
    plural = "deadletteractions",
    shortname = "dla",
    namespaced,
    status = "DeadLetterActionStatus",
    printcolumn = r#"{"name":"Pipeline","type":"string","jsonPath":".spec.pipeline"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterActionSpec {
    /// The StreamPipeline (same namespace) whose dead letters.
    pub pipeline: String,
    /// List, Redrive or Purge.
    pub action: DeadLetterVerb,
    /// List: at most this many, oldest first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// List: each one's payload too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub payloads: bool,
    /// Redrive, Purge: these dead letters (ids as listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Redrive, Purge: every dead letter there is now (instead of `ids`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
    /// Redrive: the http interface whose answer store keeps the answers
    /// [default: the only http interface].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Redrive: who may fetch the answers, for an interface that
    /// identifies its callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Redrive: also send a letter whose node now runs on another group.
    #[serde(default, skip_serializing_if = "is_false")]
    pub follow_moved: bool,
    /// Redrive, Purge: say what would be done; do nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The three actions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeadLetterVerb {
    List,
    Redrive,
    Purge,
}

/// Where an action stands.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterActionStatus {
    /// Running, Succeeded or Failed; absent until the operator takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DeadLetterPhase>,
    /// Why it failed, or what it did in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What it did, one line per dead letter (a listing: a table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// When the operator took it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// Phases of an action; it is acted on only when it has none.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeadLetterPhase {
    Running,
    Succeeded,
    Failed,
}

impl DeadLetterPhase {
    /// Whether the action is over.
    pub fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// `<ms>-<seq>`, both decimal: a stream entry id as listed.
pub fn is_entry_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    id.split_once('-')
        .is_some_and(|(ms, seq)| digits(ms) && digits(seq))
}

/// Pattern of [`is_entry_id`], for the schema.
pub const ENTRY_ID_PATTERN: &str = "^[0-9]{1,20}-[0-9]{1,20}$";

impl DeadLetterActionSpec {
    /// `action` on `pipeline`'s dead letters, every option at its default.
    pub fn new(pipeline: &str, action: DeadLetterVerb) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            action,
            limit: None,
            payloads: false,
            ids: vec![],
            all: false,
            interface: None,
            caller: None,
            follow_moved: false,
            dry_run: false,
        }
    }

    /// Checks what the schema checks too (an object read back from the API
    /// server is not trusted to have passed it), and what it cannot: which
    /// fields go with which action. The error names the field.
    ///
    /// # Errors
    /// The first field found wrong, as `spec.<field>: <why>`.
    pub fn check(&self) -> Result<(), String> {
        let bad = |field: &str, why: &str| Err(format!("spec.{field}: {why}"));
        if !is_dns1035_label(&self.pipeline, MAX_PIPELINE_NAME) {
            return bad("pipeline", "not a pipeline name");
        }
        let picks = self.action != DeadLetterVerb::List;
        if !picks {
            for (set, field) in [
                (!self.ids.is_empty(), "ids"),
                (self.all, "all"),
                (self.dry_run, "dryRun"),
            ] {
                if set {
                    return bad(field, "only for Redrive and Purge");
                }
            }
            if self.limit.is_some_and(|l| l == 0 || l > MAX_LIST) {
                return bad("limit", &format!("between 1 and {MAX_LIST}"));
            }
        } else {
            if self.limit.is_some() || self.payloads {
                return bad(
                    if self.payloads { "payloads" } else { "limit" },
                    "only for List",
                );
            }
            if self.all != self.ids.is_empty() {
                return bad("ids", "name the dead letters: ids, or all (not both)");
            }
            if self.ids.len() > MAX_IDS {
                return bad("ids", &format!("at most {MAX_IDS}"));
            }
            if let Some(i) = self.ids.iter().position(|id| !is_entry_id(id)) {
                return bad(
                    &format!("ids[{i}]"),
                    "not an entry id (like 1767225600000-0)",
                );
            }
        }
        if self.action != DeadLetterVerb::Redrive {
            for (set, field) in [
                (self.interface.is_some(), "interface"),
                (self.caller.is_some(), "caller"),
                (self.follow_moved, "followMoved"),
            ] {
                if set {
                    return bad(field, "only for Redrive");
                }
            }
        }
        if let Some(i) = &self.interface {
            if !is_dns_label(i, crate::limits::MAX_NAME) {
                return bad("interface", "not an interface name");
            }
        }
        if let Some(c) = &self.caller {
            if c.is_empty() || c.len() > MAX_CALLER || c.chars().any(char::is_control) {
                return bad(
                    "caller",
                    &format!("1 to {MAX_CALLER} characters, no control characters"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(action: DeadLetterVerb) -> DeadLetterActionSpec {
        DeadLetterActionSpec::new("orders", action)
    }

    #[test]
    fn each_field_goes_with_its_actions_and_the_error_names_it() {
        assert_eq!(spec(DeadLetterVerb::List).check(), Ok(()));
        let field_of = |s: DeadLetterActionSpec| s.check().unwrap_err();
        let mut s = spec(DeadLetterVerb::List);
        s.all = true;
        assert!(field_of(s).starts_with("spec.all:"));
        let mut s = spec(DeadLetterVerb::List);
        s.limit = Some(MAX_LIST + 1);
        assert!(field_of(s).starts_with("spec.limit:"));
        // Redrive and purge name their letters, exactly one way.
        let s = spec(DeadLetterVerb::Purge);
        assert!(field_of(s).starts_with("spec.ids:"));
        let mut s = spec(DeadLetterVerb::Redrive);
        s.all = true;
        s.ids = vec!["1-0".into()];
        assert!(field_of(s).starts_with("spec.ids:"));
        let mut s = spec(DeadLetterVerb::Redrive);
        s.ids = vec!["1-0".into(), "1-x".into()];
        assert!(field_of(s).starts_with("spec.ids[1]:"));
        let mut s = spec(DeadLetterVerb::Redrive);
        s.ids = vec!["1-0".into(); MAX_IDS + 1];
        assert!(field_of(s).starts_with("spec.ids:"));
        let mut s = spec(DeadLetterVerb::Purge);
        s.all = true;
        s.caller = Some("alice".into());
        assert!(field_of(s).starts_with("spec.caller:"));
        let mut s = spec(DeadLetterVerb::Redrive);
        s.all = true;
        s.caller = Some("al\u{1b}[2Jice".into());
        assert!(field_of(s.clone()).starts_with("spec.caller:"));
        s.caller = Some("alice".into());
        s.interface = Some("Orders".into());
        assert!(field_of(s.clone()).starts_with("spec.interface:"));
        s.interface = Some("orders".into());
        assert_eq!(s.check(), Ok(()));
        let mut s = spec(DeadLetterVerb::List);
        s.pipeline = "a/status".into();
        assert!(field_of(s).starts_with("spec.pipeline:"));
    }

    #[test]
    fn entry_ids_are_two_decimal_numbers() {
        for ok in ["0-0", "1767225600000-12", "1-18446744073709551615"] {
            assert!(is_entry_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-0-0",
            "a-1",
            "1-+1",
            &"9".repeat(21),
        ] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }
}

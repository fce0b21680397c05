//! The execution plan: a validated spec with every default applied and every
//! duration and size parsed, in the shape the runtime processes run.
//!
//! ```text
//! StreamPipelineSpec ──validate──▶ FieldErrors (refused)
//!          └──────────compile───▶ Plan ──▶ web-ingress / exec-worker
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::graphql::{GqlType, Scalar};
use crate::types::*;
use crate::units::{parse_duration, parse_size};
use crate::validate::{validate, validate_id, FieldError};

pub use crate::defaults::*;
pub use crate::names::PipelineId;

/// What a pipeline runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: PipelineId,
    pub backend: BackendKind,
    pub interfaces: Vec<InterfacePlan>,
    /// The one group with role `ingress`.
    pub ingress_group: String,
    pub groups: BTreeMap<String, GroupPlan>,
    pub nodes: BTreeMap<String, NodePlan>,
    pub limits: Limits,
    pub security: Security,
    /// Replay-guard nonces one ingress process may have outstanding in
    /// managed Redis; `None` for external Redis ([`crate::replay_budget`]).
    pub replay_budget: Option<u64>,
    /// How long an asynchronous answer can be fetched after its request's
    /// deadline.
    pub results_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InterfacePlan {
    pub name: String,
    pub kind: InterfaceKind,
    pub path: String,
    pub entry: String,
    pub timeout: Duration,
    pub max_in_flight: u32,
    pub ordered: bool,
    /// Connection limits; `Some` exactly for `websocket` interfaces.
    pub websocket: Option<WebSocketPlan>,
    /// Operations and limits; `Some` exactly for `graphql` interfaces.
    pub graphql: Option<GraphqlPlan>,
    /// Whether a POST answers `202` without `Prefer: respond-async`.
    pub mode: InterfaceMode,
    /// The deadline of an asynchronous request, from its submit.
    pub async_timeout: Duration,
    /// How callers are identified; `None`: anyone, anonymously.
    pub auth: Option<AuthPlan>,
    /// Per caller and ingress process: (requests per second, burst).
    pub rate_limit: Option<(u32, u32)>,
    /// Worker groups whose queues a request of this interface may cross;
    /// admission checks their backlog, and the ingress takes an error reply
    /// from any of them (each may fail the request it holds).
    pub path_groups: Vec<String>,
    /// Groups running a node without `next` that a request of this
    /// interface may reach: the groups that answer it. The ingress takes a
    /// reply carrying an answer only from these (docs/wire-format.md).
    pub terminal_groups: Vec<String>,
    /// Queue hops on the longest path a request may take: the most
    /// envelopes (and replay-guard nonces) one request costs the workers.
    pub hops: u32,
}

impl InterfacePlan {
    /// The nodes a request of this interface may enter at: its `entry`,
    /// and a graphql interface's operations' entries.
    pub fn entries(&self) -> Vec<&str> {
        let mut entries = vec![self.entry.as_str()];
        if let Some(g) = &self.graphql {
            entries.extend(
                g.queries
                    .iter()
                    .chain(&g.mutations)
                    .map(|o| o.entry.as_str()),
            );
        }
        entries.sort_unstable();
        entries.dedup();
        entries
    }
}

/// A `graphql` interface's schema and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlPlan {
    pub queries: Vec<GraphqlOperationPlan>,
    pub mutations: Vec<GraphqlOperationPlan>,
    pub max_depth: u32,
    pub max_complexity: u32,
}

/// One root field: its arguments go to `entry` as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlOperationPlan {
    pub name: String,
    pub entry: String,
    pub arguments: Vec<(String, GqlType)>,
    pub result: GraphqlResult,
}

/// What an operation answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphqlResult {
    Type(GqlType),
    /// An object type `<Name>Result` with these fields.
    Fields(Vec<(String, GqlType)>),
}

/// Limits of each connection of a `websocket` interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketPlan {
    /// Messages read and not yet answered on the socket, at most.
    pub max_in_flight: u32,
    /// Open connections per ingress process, at most.
    pub max_connections: u32,
    /// Closed when nothing was in flight, read or answered for this long.
    pub idle_timeout: Duration,
    /// Closed (after answering) this long after opening.
    pub max_lifetime: Duration,
    /// Ping period; no pong for this long again ends the connection.
    pub ping_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    pub name: String,
    pub role: GroupRole,
    pub concurrency: u32,
    /// Nodes placed on this group, sorted.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    pub name: String,
    pub group: String,
    pub uses: String,
    /// The `with` block, `Value::Null` when absent.
    pub with: Value,
    pub next: Next,
}

/// How an interface identifies its callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPlan {
    /// Bearer tokens from `<secrets dir>/<secret>/<key>`, one
    /// `<caller>:<token>` per line.
    Bearer { secret: String, key: String },
    /// The caller is this header's value, set by a proxy in front.
    TrustedHeader(String),
}

/// Where a node's output goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The output is the reply.
    Terminal,
    To(String),
    /// First route whose tag matches wins; `default` when none does.
    Routes {
        routes: Vec<(String, String)>,
        default: Option<String>,
    },
}

impl Next {
    /// The node the output goes to, given the node's tag; `None` is terminal.
    ///
    /// # Errors
    /// A tag that matches no route and no default (the caller gets a
    /// permanent error naming the tag).
    pub fn resolve(&self, tag: Option<&str>) -> Result<Option<&str>, String> {
        match self {
            Next::Terminal => Ok(None),
            Next::To(n) => Ok(Some(n)),
            Next::Routes { routes, default } => {
                if let Some(t) = tag {
                    if let Some((_, to)) = routes.iter().find(|(w, _)| w == t) {
                        return Ok(Some(to));
                    }
                }
                match default {
                    Some(d) => Ok(Some(d)),
                    None => Err(format!(
                        "no route for tag {} and no default route",
                        tag.map_or("<none>".to_string(), |t| format!("`{t}`"))
                    )),
                }
            }
        }
    }

    /// Every node this may lead to.
    pub(crate) fn targets(&self) -> Vec<&str> {
        match self {
            Next::Terminal => vec![],
            Next::To(n) => vec![n],
            Next::Routes { routes, default } => routes
                .iter()
                .map(|(_, t)| t.as_str())
                .chain(default.as_deref())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_queue_depth: u64,
    pub max_queue_bytes: u64,
    pub max_deliveries: u32,
    pub lease: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    pub rotate_every: Duration,
    pub clock_skew: Duration,
    pub max_payload_bytes: u64,
}

impl Plan {
    /// Every node a request entering at `starts` may run, `starts` included
    /// (those the plan has).
    pub fn reachable_from<'a>(&'a self, starts: &[&'a str]) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::new();
        let mut next: Vec<&str> = starts.to_vec();
        while let Some(n) = next.pop() {
            let Some(node) = self.nodes.get(n) else {
                continue;
            };
            if seen.insert(node.name.as_str()) {
                next.extend(node.next.targets());
            }
        }
        seen
    }

    /// The worker groups (every group but the ingress), sorted.
    pub fn worker_groups(&self) -> impl Iterator<Item = &GroupPlan> {
        self.groups.values().filter(|g| g.role == GroupRole::Worker)
    }

    /// The longest interface timeout, asynchronous ones included: bounds
    /// how long envelopes live.
    pub fn max_timeout(&self) -> Duration {
        self.interfaces
            .iter()
            .map(|i| i.timeout.max(i.async_timeout))
            .max()
            .unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// Validates `id` and `spec` and compiles them.
///
/// Total: any `id` and `spec` give a plan or field errors, never a panic.
///
/// # Errors
/// Every violated rule, each with its field path.
pub fn compile(id: PipelineId, spec: &StreamPipelineSpec) -> Result<Plan, Vec<FieldError>> {
    let mut errors = validate_id(&id);
    errors.extend(validate(spec));
    if !errors.is_empty() {
        return Err(errors);
    }
    // After validation, every parse below succeeds; the fallbacks are never used.
    let dur = |v: &Option<String>, d: Duration| {
        v.as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(d)
    };

    let nodes: BTreeMap<String, NodePlan> = spec
        .nodes
        .iter()
        .map(|n| {
            let next = match &n.next {
                None => Next::Terminal,
                Some(NextSpec::One(t)) => Next::To(t.clone()),
                Some(NextSpec::Routes(rs)) => Next::Routes {
                    routes: rs
                        .iter()
                        .filter_map(|r| r.when.clone().map(|w| (w, r.to.clone())))
                        .collect(),
                    default: rs.iter().find(|r| r.when.is_none()).map(|r| r.to.clone()),
                },
            };
            let plan = NodePlan {
                name: n.name.clone(),
                group: n.group.clone(),
                uses: n.uses.clone(),
                with: n.with.clone().unwrap_or(Value::Null),
                next,
            };
            (n.name.clone(), plan)
        })
        .collect();

    let groups: BTreeMap<String, GroupPlan> = spec
        .groups
        .iter()
        .map(|g| {
            let plan = GroupPlan {
                name: g.name.clone(),
                role: g.role,
                concurrency: g.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
                nodes: nodes
                    .values()
                    .filter(|n| n.group == g.name)
                    .map(|n| n.name.clone())
                    .collect(),
            };
            (g.name.clone(), plan)
        })
        .collect();
    let ingress_group = spec
        .groups
        .iter()
        .find(|g| g.role == GroupRole::Ingress)
        .map(|g| g.name.clone())
        .unwrap_or_default();

    let interfaces = spec
        .interfaces
        .iter()
        .map(|i| {
            let mut entries = vec![i.entry.as_str()];
            if let Some(g) = &i.graphql {
                entries.extend(g.operations.iter().filter_map(|o| o.entry.as_deref()));
            }
            let reach = Reach::from_entries(&entries, &nodes, &ingress_group);
            let timeout = dur(&i.timeout, DEFAULT_TIMEOUT);
            InterfacePlan {
                name: i.name.clone(),
                kind: i.kind,
                path: i.path.clone(),
                entry: i.entry.clone(),
                timeout,
                mode: i.mode.unwrap_or_default(),
                async_timeout: dur(&i.async_timeout, timeout),
                auth: i
                    .auth
                    .as_ref()
                    .and_then(|a| match (&a.bearer, &a.trusted_header) {
                        (Some(b), _) => Some(AuthPlan::Bearer {
                            secret: b.secret_ref.name.clone(),
                            key: b.secret_ref.key.clone(),
                        }),
                        (None, Some(h)) => Some(AuthPlan::TrustedHeader(h.to_ascii_lowercase())),
                        (None, None) => None,
                    }),
                rate_limit: i
                    .auth
                    .as_ref()
                    .and_then(|a| a.rate_limit.as_ref())
                    .map(|r| {
                        (
                            r.requests_per_second,
                            r.burst.unwrap_or(r.requests_per_second),
                        )
                    }),
                max_in_flight: i.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
                ordered: i.ordered.unwrap_or(false),
                graphql: (i.kind == InterfaceKind::Graphql)
                    .then(|| graphql_plan(i, i.graphql.clone().unwrap_or_default())),
                websocket: (i.kind == InterfaceKind::Websocket).then(|| {
                    let w = i.websocket.clone().unwrap_or_default();
                    WebSocketPlan {
                        max_in_flight: w
                            .max_in_flight_per_connection
                            .unwrap_or(DEFAULT_WS_IN_FLIGHT),
                        max_connections: w.max_connections.unwrap_or(DEFAULT_WS_CONNECTIONS),
                        idle_timeout: dur(&w.idle_timeout, DEFAULT_WS_IDLE),
                        max_lifetime: dur(&w.max_lifetime, DEFAULT_WS_LIFETIME),
                        ping_interval: dur(&w.ping_interval, DEFAULT_WS_PING),
                    }
                }),
                path_groups: reach.worker_groups.into_iter().collect(),
                terminal_groups: reach.terminal_groups.into_iter().collect(),
                hops: reach.hops,
            }
        })
        .collect();

    let l = &spec.limits;
    let s = &spec.security;
    let max_queue_bytes = l
        .max_queue_bytes
        .as_deref()
        .and_then(|b| parse_size(b).ok())
        .unwrap_or(DEFAULT_MAX_QUEUE_BYTES);
    let replay_budget =
        crate::replay_budget::per_ingress(&id.namespace, &id.name, spec, max_queue_bytes);
    Ok(Plan {
        id,
        backend: spec.backends.queue,
        interfaces,
        ingress_group,
        groups,
        nodes,
        limits: Limits {
            max_queue_depth: l.max_queue_depth.unwrap_or(DEFAULT_MAX_QUEUE_DEPTH),
            max_queue_bytes,
            max_deliveries: l.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES),
            lease: dur(&l.lease, DEFAULT_LEASE),
        },
        security: Security {
            rotate_every: dur(&s.rotate_every, DEFAULT_ROTATE_EVERY),
            clock_skew: dur(&s.clock_skew, DEFAULT_CLOCK_SKEW),
            max_payload_bytes: s.max_payload_bytes.unwrap_or(DEFAULT_MAX_PAYLOAD),
        },
        replay_budget,
        results_ttl: dur(
            &spec.results.as_ref().and_then(|r| r.ttl.clone()),
            DEFAULT_RESULTS_TTL,
        ),
    })
}

/// What a request entering at one node may reach.
struct Reach {
    /// Worker groups of the reachable nodes.
    worker_groups: BTreeSet<String>,
    /// Groups of the reachable nodes without `next`.
    terminal_groups: BTreeSet<String>,
    /// Worker-group nodes on the longest path from the entry.
    hops: u32,
}

/// A graphql interface's plan; validation has checked the types parse.
fn graphql_plan(i: &InterfaceSpec, g: GraphqlSpec) -> GraphqlPlan {
    let typed = |m: &Option<BTreeMap<String, String>>| -> Vec<(String, GqlType)> {
        m.iter()
            .flatten()
            .filter_map(|(k, t)| Some((k.clone(), GqlType::parse(t).ok()?)))
            .collect()
    };
    let mut plan = GraphqlPlan {
        queries: Vec::new(),
        mutations: Vec::new(),
        max_depth: g.max_depth.unwrap_or(DEFAULT_GRAPHQL_DEPTH),
        max_complexity: g.max_complexity.unwrap_or(DEFAULT_GRAPHQL_COMPLEXITY),
    };
    for o in &g.operations {
        let result = match &o.result_fields {
            Some(_) => GraphqlResult::Fields(typed(&o.result_fields)),
            None => GraphqlResult::Type(
                o.result
                    .as_deref()
                    .and_then(|t| GqlType::parse(t).ok())
                    .unwrap_or(GqlType::Named {
                        scalar: Scalar::Json,
                        non_null: false,
                    }),
            ),
        };
        let op = GraphqlOperationPlan {
            name: o.name.clone(),
            entry: o.entry.clone().unwrap_or_else(|| i.entry.clone()),
            arguments: typed(&o.arguments),
            result,
        };
        match o.kind {
            GraphqlOperationKind::Query => plan.queries.push(op),
            GraphqlOperationKind::Mutation => plan.mutations.push(op),
        }
    }
    plan
}

impl Reach {
    /// What requests entering at any of `entries` may reach.
    fn from_entries(entries: &[&str], nodes: &BTreeMap<String, NodePlan>, ingress: &str) -> Self {
        let mut all = Reach {
            worker_groups: BTreeSet::new(),
            terminal_groups: BTreeSet::new(),
            hops: 0,
        };
        for e in entries {
            let r = Reach::from(e, nodes, ingress);
            all.worker_groups.extend(r.worker_groups);
            all.terminal_groups.extend(r.terminal_groups);
            all.hops = all.hops.max(r.hops);
        }
        all
    }

    fn from(entry: &str, nodes: &BTreeMap<String, NodePlan>, ingress: &str) -> Self {
        let mut seen = BTreeSet::new();
        let mut reach = Reach {
            worker_groups: BTreeSet::new(),
            terminal_groups: BTreeSet::new(),
            hops: longest_path(entry, nodes, ingress),
        };
        let mut todo = vec![entry];
        while let Some(n) = todo.pop() {
            if !seen.insert(n) {
                continue;
            }
            if let Some(node) = nodes.get(n) {
                if node.group != ingress {
                    reach.worker_groups.insert(node.group.clone());
                }
                if node.next == Next::Terminal {
                    reach.terminal_groups.insert(node.group.clone());
                }
                todo.extend(node.next.targets());
            }
        }
        reach
    }
}

/// Worker-group nodes on the longest path from `entry`. Validation has
/// refused cycles; a node reached again on the current path (never, after
/// validation) counts nothing more, so this ends on any graph.
fn longest_path(entry: &str, nodes: &BTreeMap<String, NodePlan>, ingress: &str) -> u32 {
    fn walk<'a>(
        n: &'a str,
        nodes: &'a BTreeMap<String, NodePlan>,
        ingress: &str,
        on_path: &mut BTreeSet<&'a str>,
        memo: &mut BTreeMap<&'a str, u32>,
    ) -> u32 {
        if let Some(&h) = memo.get(n) {
            return h;
        }
        let Some(node) = nodes.get(n) else { return 0 };
        if !on_path.insert(n) {
            return 0;
        }
        let rest = node
            .next
            .targets()
            .into_iter()
            .map(|t| walk(t, nodes, ingress, on_path, memo))
            .max()
            .unwrap_or(0);
        on_path.remove(n);
        let h = rest.saturating_add(u32::from(node.group != ingress));
        memo.insert(n, h);
        h
    }
    walk(
        entry,
        nodes,
        ingress,
        &mut BTreeSet::new(),
        &mut BTreeMap::new(),
    )
}

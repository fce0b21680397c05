//! What a spec left out becomes: the defaults the plan applies and
//! validation checks against (a bound may depend on them).

use std::time::Duration;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);
pub const DEFAULT_ROTATE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Pods of one cluster keep their clocks within milliseconds (NTP); a few
/// seconds is ample, and every second of skew is a second more that the
/// replay guard remembers each nonce.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 20;
/// How long an asynchronous answer can be fetched after its request's
/// `asyncTimeout`.
pub const DEFAULT_RESULTS_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1024;
pub const DEFAULT_WS_IN_FLIGHT: u32 = 32;
pub const DEFAULT_WS_CONNECTIONS: u32 = 1024;
pub const DEFAULT_WS_IDLE: Duration = Duration::from_secs(300);
pub const DEFAULT_WS_LIFETIME: Duration = Duration::from_secs(3600);
pub const DEFAULT_WS_PING: Duration = Duration::from_secs(30);
pub const DEFAULT_GRAPHQL_DEPTH: u32 = 8;
pub const DEFAULT_GRAPHQL_COMPLEXITY: u32 = 64;
pub const DEFAULT_MAX_QUEUE_DEPTH: u64 = 10_000;
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 64 << 20;
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
pub const DEFAULT_CONCURRENCY: u32 = 8;

//! How the process's CPUs are shared between the runtime serving HTTP and,
//! in the memory profile, the runtime running the worker groups inline.
//!
//! The two runtimes together get as many threads as there are CPUs: more
//! threads than CPUs only take turns, and every turn is a context switch
//! (measured in docs/benchmarks.md: the memory profile on two CPUs with two
//! threads each spent a fifth more CPU per request than with one each).
//! The split stays: a node that burns CPU on the inline runtime never takes
//! the threads that accept requests. One inline thread (two CPUs or fewer)
//! runs every inline group's tasks: nodes must not block it (blocking or
//! computing work belongs in `spawn_blocking`, as for a worker process's
//! `--threads`), or their leases are not renewed meanwhile.
//!
//! It must not decide anything else about the runtimes.

/// The most threads `--threads` or `--inline-threads` takes: a count typed
/// wrong must not start thousands of threads.
pub const MAX_THREADS: usize = 256;

/// The thread counts given by flag or variable; `None`: the profile's
/// default ([`ThreadCounts::split`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCounts {
    /// `--threads`: the HTTP runtime.
    pub http: Option<usize>,
    /// `--inline-threads`: the inline worker groups (memory profile).
    pub inline: Option<usize>,
}

/// The threads each runtime runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub http: usize,
    /// Zero: no inline runtime (no worker group runs in this process).
    pub inline: usize,
}

impl ThreadCounts {
    /// The threads of each runtime on `cpus` CPUs, `inline` when worker
    /// groups run in this process (memory backends). Then the inline
    /// groups get half the CPUs, the HTTP runtime the rest, at least one
    /// each; a count given for one runtime leaves the other the CPUs it
    /// does not take. Otherwise every CPU serves HTTP.
    pub fn split(self, inline: bool, cpus: usize) -> Split {
        let cpus = cpus.max(1);
        if !inline {
            return Split {
                http: self.http.unwrap_or(cpus),
                inline: 0,
            };
        }
        let inline = match (self.inline, self.http) {
            (Some(n), _) => n,
            (None, Some(http)) => cpus.saturating_sub(http).max(1),
            (None, None) => (cpus / 2).max(1),
        };
        Split {
            http: self
                .http
                .unwrap_or_else(|| cpus.saturating_sub(inline).max(1)),
            inline,
        }
    }
}

/// The CPUs this process may use (its cgroup's quota included), at least 1.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: ThreadCounts = ThreadCounts {
        http: None,
        inline: None,
    };

    fn split(http: usize, inline: usize) -> Split {
        Split { http, inline }
    }

    #[test]
    fn inline_workers_share_the_cpus_with_http() {
        let memory = true;
        assert_eq!(NONE.split(memory, 1), split(1, 1));
        assert_eq!(NONE.split(memory, 2), split(1, 1));
        assert_eq!(NONE.split(memory, 3), split(2, 1));
        assert_eq!(NONE.split(memory, 8), split(4, 4));
        // No CPU reported is taken as one.
        assert_eq!(NONE.split(memory, 0), split(1, 1));
    }

    #[test]
    fn a_count_given_for_one_runtime_leaves_the_rest_to_the_other() {
        let memory = true;
        let inline = |n| ThreadCounts {
            http: None,
            inline: Some(n),
        };
        let http = |n| ThreadCounts {
            http: Some(n),
            inline: None,
        };
        assert_eq!(inline(3).split(memory, 8), split(5, 3));
        assert_eq!(inline(8).split(memory, 8), split(1, 8));
        assert_eq!(http(6).split(memory, 8), split(6, 2));
        assert_eq!(http(8).split(memory, 8), split(8, 1));
        let both = ThreadCounts {
            http: Some(3),
            inline: Some(5),
        };
        assert_eq!(both.split(memory, 2), split(3, 5));
    }

    #[test]
    fn without_inline_workers_every_cpu_serves_http() {
        assert_eq!(NONE.split(false, 2), split(2, 0));
        let given = ThreadCounts {
            http: Some(3),
            inline: Some(7),
        };
        assert_eq!(given.split(false, 2), split(3, 0));
    }
}

//! Groups: names, roles, images, concurrency and autoscaling.

use super::*;

/// Returns group name → role for the groups that are well-formed.
pub(super) fn check_groups(
    spec: &StreamPipelineSpec,
    e: &mut Errors,
) -> BTreeMap<String, GroupRole> {
    let mut groups = BTreeMap::new();
    if spec.groups.len() > MAX_GROUPS {
        e.push("spec.groups", format!("at most {MAX_GROUPS} groups"));
    }
    for (i, g) in spec.groups.iter().enumerate() {
        let p = format!("spec.groups[{i}]");
        if !is_dns_label(&g.name, MAX_GROUP_NAME) {
            e.push(
                format!("{p}.name"),
                format!(
                    "{} must be lowercase letters, digits and '-', at most {MAX_GROUP_NAME} characters",
                    shown(&g.name)
                ),
            );
        }
        if groups.insert(g.name.clone(), g.role).is_some() {
            e.push(
                format!("{p}.name"),
                format!("duplicate group name {}", shown(&g.name)),
            );
        }
        e.count(&format!("{p}.replicas"), g.replicas, (0, MAX_REPLICAS));
        e.count(
            &format!("{p}.concurrency"),
            g.concurrency,
            (1, MAX_CONCURRENCY),
        );
        check_image(&format!("{p}.image"), g.image.as_ref(), e);
        e.items(
            &format!("{p}.sidecars"),
            g.sidecars.as_deref(),
            MAX_SIDECARS,
        );
        e.items(
            &format!("{p}.tolerations"),
            g.tolerations.as_deref(),
            MAX_OTHER_ITEMS,
        );
        if let Some(a) = &g.autoscale {
            check_autoscale(&p, g.role, a, e);
        }
        if spec.backends.queue == BackendKind::Tcp && g.role == GroupRole::Worker {
            // A tcp worker group is a process (a container) beside its
            // ingress: it scales with the ingress's pods.
            if g.replicas.is_some() {
                e.push(
                    format!("{p}.replicas"),
                    "tcp pipelines run one process of each worker group beside each ingress; \
                     scale the ingress group's replicas instead",
                );
            }
            if g.autoscale.is_some() {
                e.push(
                    format!("{p}.autoscale"),
                    "tcp pipelines do not autoscale worker groups (they run beside each ingress); \
                     use redis backends to scale groups on their own",
                );
            }
        }
    }
    let ingress = spec
        .groups
        .iter()
        .filter(|g| g.role == GroupRole::Ingress)
        .count();
    if ingress != 1 {
        e.push(
            "spec.groups",
            format!("exactly one group must have role ingress, found {ingress}"),
        );
    }
    groups
}

fn check_autoscale(p: &str, role: GroupRole, a: &AutoscaleSpec, e: &mut Errors) {
    if role == GroupRole::Ingress {
        e.push(
            format!("{p}.autoscale"),
            "the ingress group does not autoscale; set replicas",
        );
    }
    let min = a.min_replicas.unwrap_or(1);
    e.count(
        &format!("{p}.autoscale.minReplicas"),
        a.min_replicas,
        (0, MAX_REPLICAS),
    );
    if a.max_replicas < 1 || a.max_replicas < min || a.max_replicas > MAX_REPLICAS {
        e.push(
            format!("{p}.autoscale.maxReplicas"),
            format!(
                "must be at least 1 and at least minReplicas ({min}), and at most {MAX_REPLICAS}"
            ),
        );
    }
    e.count(
        &format!("{p}.autoscale.targetBacklogPerReplica"),
        a.target_backlog_per_replica,
        (1, MAX_BACKLOG_PER_REPLICA),
    );
    if let Some(r) = a.target_rate_per_replica {
        if !(r.is_finite() && r > 0.0 && r <= MAX_RATE_PER_REPLICA) {
            e.push(
                format!("{p}.autoscale.targetRatePerReplica"),
                format!("must be a positive number of envelopes per second, at most {MAX_RATE_PER_REPLICA:e}"),
            );
        }
    }
    if a.target_processing_time.is_some() {
        let t = e.duration(
            &format!("{p}.autoscale.targetProcessingTime"),
            a.target_processing_time.as_ref(),
            Duration::from_secs(1),
            (Duration::ZERO, MAX_AUTOSCALE_WINDOW),
        );
        if t.is_zero() {
            e.push(
                format!("{p}.autoscale.targetProcessingTime"),
                "must be more than zero",
            );
        }
    }
    e.duration(
        &format!("{p}.autoscale.scaleDownStabilization"),
        a.scale_down_stabilization.as_ref(),
        Duration::ZERO,
        (Duration::ZERO, MAX_AUTOSCALE_WINDOW),
    );
    e.count(
        &format!("{p}.autoscale.targetCpuUtilization"),
        a.target_cpu_utilization,
        (1, 100),
    );
}

//! The pod of a tcp pipeline (DESIGN §1, the secure-TCP profile): one
//! Deployment `P-<ingress group>`, with the ingress group's replicas, whose
//! pods hold the ingress and one container per worker group, sharing the
//! pod's loopback.
//!
//! ```text
//! pod of Deployment P-<ingress group>
//!   ingress       sluice-web-ingress … --backend tcp --workers external --hub 127.0.0.1:7311
//!                 port 8080 `http` (Service P); the keys of every group, since
//!                 the hub checks each worker's handshake with its group's key
//!   worker-<g0>   sluice-exec-worker … --group g0 --admin [::]:9090 --backend tcp --hub 127.0.0.1:7311
//!                 port 9090 `admin-0`; volume keys-<g0>: g0's keys only
//!   worker-<g1>   … --admin [::]:9091 …, port 9091 `admin-1`, keys-<g1>
//!   sidecars      of every group, in spec order
//! ```
//!
//! The kubelet is the supervisor: each container restarts on its own under
//! the pod's `restartPolicy` and is probed on its own port, and the ingress
//! is ready only while every worker group is connected to its hub. The hub
//! listens on loopback only, so no port, Service or NetworkPolicy changes.
//! On stop every container gets SIGTERM at once, so the worker containers
//! first sleep in a `preStop` hook while the ingress drains: what it still
//! accepts and answers needs them.
//!
//! No Redis, no worker Deployment, no autoscaling object: the queues live in
//! the ingress process and the groups scale with its pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Lifecycle, LifecycleHandler, SleepAction, Volume};
use sluice_crds::{FieldError, GroupRole, GroupSpec, StreamPipelineSpec};

use super::context::Ctx;
use super::contract::{main_container, ADMIN_PORT, HUB_PORT, INGRESS_PORT};
use super::pod_spec;
use super::pods;
use super::secret_refs::SecretRefUse;
use crate::names;

/// The name of group `g`'s runtime container in the pod: `ingress`, or
/// `worker-<group>` (a DNS label: group names are at most 30 characters).
pub fn container_name(g: &GroupSpec) -> String {
    match g.role {
        GroupRole::Ingress => main_container(GroupRole::Ingress).to_string(),
        GroupRole::Worker => format!("{}-{}", main_container(GroupRole::Worker), g.name),
    }
}

/// Where the hub listens inside the pod.
pub fn hub_address() -> String {
    format!("127.0.0.1:{HUB_PORT}")
}

/// The admin port of the `k`-th worker group's container and its name
/// (an IANA service name: at most 15 characters, unique in the pod).
pub fn admin_port(k: usize) -> (String, i32) {
    // Validation bounds the number of groups far below the port range.
    let offset = i32::try_from(k).unwrap_or(i32::MAX - ADMIN_PORT);
    (format!("admin-{k}"), ADMIN_PORT + offset)
}

fn workers(spec: &StreamPipelineSpec) -> impl Iterator<Item = &GroupSpec> {
    spec.groups.iter().filter(|g| g.role == GroupRole::Worker)
}

/// Refuses sidecars that would clash with another container of the pod:
/// every group's containers share one pod here, so a sidecar may take
/// neither the name of another group's container nor a port any other
/// container uses (the runtime's, the hub's, another sidecar's). Clashes
/// with the sidecar's own group's names are [`super::sidecars::check`]'s.
pub(crate) fn check(spec: &StreamPipelineSpec, errors: &mut Vec<FieldError>) {
    let mut names: BTreeMap<String, usize> = spec
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| (container_name(g), i))
        .collect();
    let mut ports: BTreeMap<i32, String> = BTreeMap::from([
        (INGRESS_PORT, "the ingress container".to_string()),
        (i32::from(HUB_PORT), "the hub".to_string()),
    ]);
    for (k, g) in workers(spec).enumerate() {
        ports.insert(
            admin_port(k).1,
            format!("container `{}`", container_name(g)),
        );
    }
    for (i, g) in spec.groups.iter().enumerate() {
        for (j, c) in g.sidecars.iter().flatten().enumerate() {
            let p = format!("spec.groups[{i}].sidecars[{j}]");
            match names.get(&c.name) {
                Some(&owner) if owner != i => errors.push(FieldError {
                    path: format!("{p}.name"),
                    message: format!(
                        "`{}` is the name of a container of group `{}`, which shares the pod \
                         in a tcp pipeline",
                        c.name, spec.groups[owner].name
                    ),
                }),
                Some(_) => {}
                None => {
                    names.insert(c.name.clone(), i);
                }
            }
            for (k, port) in c.ports.iter().flatten().enumerate() {
                let n = port.container_port;
                match ports.get(&n) {
                    Some(user) => errors.push(FieldError {
                        path: format!("{p}.ports[{k}].containerPort"),
                        message: format!(
                            "port {n} is taken by {user}: in a tcp pipeline every group's \
                             containers share the pod's network"
                        ),
                    }),
                    None => {
                        ports.insert(n, format!("sidecar `{}`", c.name));
                    }
                }
            }
        }
    }
}

/// The Deployment of a tcp pipeline: the ingress container with
/// `ingress_refs` mounted, a container per worker group with its group's
/// node Secrets from `node_secrets`, and every group's sidecars.
pub(crate) fn deployment(
    ctx: &Ctx<'_>,
    ingress: &GroupSpec,
    replicas: i32,
    ingress_refs: &[SecretRefUse],
    node_secrets: &BTreeMap<&str, Vec<SecretRefUse>>,
) -> Deployment {
    let mut volumes = Vec::new();
    let mut containers = Vec::new();

    let mut main = pods::ingress_container(ctx, ingress);
    main.args.get_or_insert_with(Vec::new).extend([
        "--backend".into(),
        "tcp".into(),
        // The kubelet starts the workers, not the ingress.
        "--workers".into(),
        "external".into(),
        "--hub".into(),
        hub_address(),
    ]);
    let keys = (
        pod_spec::VOLUME_KEYS.to_string(),
        pods::keys_secret(ctx, ingress),
    );
    let (own, mounts) = pods::runtime_volumes(ctx, ingress, keys, ingress_refs);
    main.volume_mounts = Some(mounts);
    join_volumes(&mut volumes, &mut main, own);
    containers.push(main);

    let stop_delay = ctx.settings.drain.tcp_worker_stop_delay_seconds();
    for (k, g) in workers(ctx.spec).enumerate() {
        let (port_name, port) = admin_port(k);
        let name = container_name(g);
        let tcp_args = vec![
            "--backend".into(),
            "tcp".into(),
            "--hub".into(),
            hub_address(),
        ];
        let mut c = pods::worker_runtime(ctx, g, &name, (&port_name, port), tcp_args);
        c.lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: stop_delay,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        // Each worker's own keys volume when keys are derived per group;
        // the user's ring is one volume all of them share.
        let keys_volume = if ctx.role_keys {
            pod_spec::group_keys_volume(&g.name)
        } else {
            pod_spec::VOLUME_KEYS.to_string()
        };
        let refs = node_secrets
            .get(g.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let keys = (keys_volume, pods::keys_secret(ctx, g));
        let (own, mounts) = pods::runtime_volumes(ctx, g, keys, refs);
        c.volume_mounts = Some(mounts);
        join_volumes(&mut volumes, &mut c, own);
        containers.push(c);
    }

    for g in &ctx.spec.groups {
        containers.extend(pods::sidecars_of(g));
    }
    pods::workload(
        ctx,
        ingress,
        Some(replicas),
        containers,
        volumes,
        ctx.settings.drain.tcp_termination_grace_seconds(),
    )
}

/// Adds the volumes container `c` mounts to the pod's. One that is already
/// there as it is (the pipeline file, `/tmp`, a shared key ring) is shared;
/// a node Secret another container mounts with other keys gets a volume of
/// its own for `c`, so each container sees only the keys its nodes name.
fn join_volumes(pod: &mut Vec<Volume>, c: &mut Container, wanted: Vec<Volume>) {
    for mut v in wanted {
        if let Some(there) = pod.iter().find(|p| p.name == v.name) {
            if *there == v {
                continue;
            }
            let secret = v
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.clone())
                .unwrap_or_default();
            // A '.' never appears in a container name, and makes the
            // volume name a hash of both.
            let renamed = names::secret_volume(&format!("{secret}.{}", c.name));
            for m in c.volume_mounts.iter_mut().flatten() {
                if m.name == v.name {
                    m.name.clone_from(&renamed);
                }
            }
            v.name = renamed;
        }
        pod.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{group_mut, kinds, orders_tcp, pod_of, render};
    use crate::render::{desired, GeneratedSecret};
    use crate::settings::OperatorSettings;
    use k8s_openapi::api::core::v1::PodSpec;

    fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// Mount path → volume of container `name`.
    fn mounts(pod: &PodSpec, name: &str) -> BTreeMap<String, Volume> {
        container(pod, name)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let v = pod
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == m.name)
                    .unwrap_or_else(|| panic!("{name} mounts unknown volume {}", m.name));
                (m.mount_path.clone(), v.clone())
            })
            .collect()
    }

    fn keys_secret_of(pod: &PodSpec, name: &str) -> String {
        mounts(pod, name)["/etc/sluice/keys"]
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            .unwrap()
    }

    #[test]
    fn a_tcp_pipeline_is_one_deployment_with_a_container_per_group() {
        let d = render(&orders_tcp());
        assert_eq!(
            kinds(&d),
            [
                ("ConfigMap", "orders-tcp-pipeline"),
                ("Service", "orders-tcp"),
                ("Deployment", "orders-tcp-web"),
            ],
            "no Redis, no worker Deployment, no autoscaling object"
        );
        let pod = pod_of(&d, "orders-tcp-web");
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ingress", "worker-cpu", "worker-io"]);
        assert_eq!(
            container(&pod, "ingress").args.as_deref().unwrap(),
            [
                "--pipeline",
                "/etc/sluice/pipeline/pipeline.yaml",
                "--listen",
                "[::]:8080",
                "--keys",
                "/etc/sluice/keys",
                "--backend",
                "tcp",
                "--workers",
                "external",
                "--hub",
                "127.0.0.1:7311",
            ]
        );
        for (g, admin) in [("cpu", "9090"), ("io", "9091")] {
            let c = container(&pod, &format!("worker-{g}"));
            assert_eq!(
                c.args.as_deref().unwrap(),
                [
                    "--pipeline",
                    "/etc/sluice/pipeline/pipeline.yaml",
                    "--group",
                    g,
                    "--keys",
                    "/etc/sluice/keys",
                    "--admin",
                    &format!("[::]:{admin}"),
                    "--backend",
                    "tcp",
                    "--hub",
                    "127.0.0.1:7311",
                ]
            );
            assert_eq!(
                c.image,
                Some(OperatorSettings::default().images.worker),
                "{g}"
            );
            assert!(
                c.env.iter().flatten().all(|e| !e.name.contains("REDIS")),
                "{g}"
            );
        }
        // The hub is loopback only: no container port, nothing new exposed.
        let ports: Vec<_> = pod
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [8080, 9090, 9091]);
        let annotations = d.objects[2]
            .pod_template()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap();
        assert_eq!(annotations[crate::labels::DEFAULT_CONTAINER], "ingress");
    }

    #[test]
    fn each_container_is_probed_on_its_own_admin_port() {
        let pod = pod_of(&render(&orders_tcp()), "orders-tcp-web");
        let mut seen = Vec::new();
        for c in &pod.containers {
            let ports = c.ports.as_deref().unwrap();
            assert_eq!(ports.len(), 1, "{}", c.name);
            let name = ports[0].name.clone().unwrap();
            for (probe, path) in [
                (&c.readiness_probe, "/readyz"),
                (&c.liveness_probe, "/healthz"),
            ] {
                let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
                assert_eq!(get.path.as_deref(), Some(path), "{}", c.name);
                assert_eq!(
                    get.port,
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name.clone()),
                    "{}",
                    c.name
                );
            }
            seen.push((name, ports[0].container_port));
        }
        assert_eq!(
            seen,
            [
                ("http".to_string(), 8080),
                ("admin-0".to_string(), 9090),
                ("admin-1".to_string(), 9091)
            ]
        );
    }

    #[test]
    fn the_ingress_holds_every_groups_keys_and_a_worker_only_its_own() {
        let sp = orders_tcp();
        let d = render(&sp);
        let pod = pod_of(&d, "orders-tcp-web");
        assert_eq!(keys_secret_of(&pod, "ingress"), "orders-tcp-ipc-keys-web");
        assert_eq!(
            keys_secret_of(&pod, "worker-cpu"),
            "orders-tcp-ipc-keys-cpu"
        );
        assert_eq!(keys_secret_of(&pod, "worker-io"), "orders-tcp-ipc-keys-io");
        // No container mounts another's keys.
        for c in &pod.containers {
            let keys: Vec<_> = mounts(&pod, &c.name)
                .into_values()
                .filter(|v| pod_spec::is_keys_volume(&v.name))
                .collect();
            assert_eq!(keys.len(), 1, "{}", c.name);
            assert_eq!(keys[0].secret.as_ref().unwrap().default_mode, Some(0o440));
        }
        let plan = &d.plan;
        assert_eq!(
            d.generated_secrets,
            [
                GeneratedSecret::KeyRing("orders-tcp-ipc-keys".into()),
                GeneratedSecret::RoleKeys {
                    name: "orders-tcp-ipc-keys-web".into(),
                    needs: plan.key_needs_of_all(),
                },
                GeneratedSecret::RoleKeys {
                    name: "orders-tcp-ipc-keys-cpu".into(),
                    needs: plan.key_needs("cpu"),
                },
                GeneratedSecret::RoleKeys {
                    name: "orders-tcp-ipc-keys-io".into(),
                    needs: plan.key_needs("io"),
                },
            ]
        );
        assert_ne!(plan.key_needs("cpu"), plan.key_needs_of_all());
        assert_eq!(d.obsolete_secrets, ["orders-tcp-redis"]);

        // With the user's ring, every container mounts that one volume.
        let mut user = sp.clone();
        user.spec.security =
            sluice_crds::yaml::from_str("{keys: secretRef, secretName: my-keys}").unwrap();
        let pod = pod_of(&render(&user), "orders-tcp-web");
        for c in ["ingress", "worker-cpu", "worker-io"] {
            assert_eq!(keys_secret_of(&pod, c), "my-keys");
        }
        assert_eq!(
            pod.volumes
                .iter()
                .flatten()
                .filter(|v| pod_spec::is_keys_volume(&v.name))
                .count(),
            1
        );
    }

    #[test]
    fn workers_get_their_groups_resources_image_and_node_secrets() {
        let mut sp = orders_tcp();
        let io = group_mut(&mut sp, "io");
        io.image = Some("example.com/custom-worker:1".into());
        io.resources = Some(sluice_crds::yaml::from_str("{requests: {cpu: 2}}").unwrap());
        // Two groups naming one Secret with different keys: each container
        // sees only its own key.
        sp.spec.nodes[1].uses = "builtin/http".into();
        sp.spec.nodes[1].with = Some(serde_json::json!({
            "url": "http://127.0.0.1:9000",
            "headersFrom": {"A": {"secretRef": {"name": "api", "key": "cpu-token"}}}
        }));
        sp.spec.nodes[4].uses = "builtin/http".into();
        sp.spec.nodes[4].with = Some(serde_json::json!({
            "url": "http://127.0.0.1:9000",
            "headersFrom": {"A": {"secretRef": {"name": "api", "key": "io-token"}}}
        }));
        let pod = pod_of(&render(&sp), "orders-tcp-web");
        let io = container(&pod, "worker-io");
        assert_eq!(io.image.as_deref(), Some("example.com/custom-worker:1"));
        let cpu_request = |c: &Container| {
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"]
                .0
                .clone()
        };
        assert_eq!(cpu_request(io), "2");
        assert_eq!(cpu_request(container(&pod, "worker-cpu")), "100m");
        let keys_of = |c: &str| -> Vec<String> {
            mounts(&pod, c)
                .get("/etc/sluice/secrets/api")
                .map(|v| {
                    let s = v.secret.as_ref().unwrap();
                    s.items.iter().flatten().map(|i| i.key.clone()).collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(keys_of("worker-cpu"), ["cpu-token"]);
        assert_eq!(keys_of("worker-io"), ["io-token"]);
        assert!(keys_of("ingress").is_empty());
        let mut names: Vec<_> = pod.volumes.iter().flatten().map(|v| &v.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "volume names are unique");
    }

    #[test]
    fn workers_stop_after_the_ingress_has_drained() {
        let settings = OperatorSettings::default();
        let d = desired(&orders_tcp(), &settings).unwrap();
        let pod = pod_of(&d, "orders-tcp-web");
        let drain = &settings.drain;
        let delay = drain.tcp_worker_stop_delay_seconds();
        assert!(delay as f64 >= (drain.ingress_grace + drain.ingress_timeout).as_secs_f64());
        for c in &pod.containers[1..] {
            let sleep = c
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| h.sleep.as_ref())
                .unwrap_or_else(|| panic!("{} has no preStop sleep", c.name));
            assert_eq!(sleep.seconds, delay, "{}", c.name);
        }
        assert!(
            pod.containers[0].lifecycle.is_none(),
            "the ingress drains at once"
        );
        let grace = pod.termination_grace_period_seconds.unwrap();
        assert!(
            grace as f64 >= delay as f64 + drain.worker_timeout.as_secs_f64(),
            "{grace}"
        );
        assert!(grace >= drain.ingress_termination_grace_seconds());
    }

    #[test]
    fn every_groups_sidecars_join_the_pod() {
        let mut sp = orders_tcp();
        group_mut(&mut sp, "io").sidecars = Some(vec![sluice_crds::yaml::from_str(
            "{name: py, image: example.com/py:1, ports: [{name: py, containerPort: 9000}]}",
        )
        .unwrap()]);
        let pod = pod_of(&render(&sp), "orders-tcp-web");
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ingress", "worker-cpu", "worker-io", "py"]);
        let py = container(&pod, "py");
        assert_eq!(
            py.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
    }

    #[test]
    fn sidecars_that_clash_with_another_container_of_the_pod_are_refused() {
        let mut sp = orders_tcp();
        group_mut(&mut sp, "web").sidecars = Some(vec![sluice_crds::yaml::from_str(
            "{name: worker-io, image: x, ports: [{containerPort: 9091}, {containerPort: 7311}]}",
        )
        .unwrap()]);
        group_mut(&mut sp, "cpu").sidecars = Some(vec![sluice_crds::yaml::from_str(
            "{name: py, image: x, ports: [{containerPort: 9000}]}",
        )
        .unwrap()]);
        group_mut(&mut sp, "io").sidecars = Some(vec![
            sluice_crds::yaml::from_str("{name: py, image: x, ports: [{containerPort: 9000}]}")
                .unwrap(),
            // Its own group's container name: sidecars::check reports it.
            sluice_crds::yaml::from_str("{name: worker-io, image: x}").unwrap(),
        ]);
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        let got: Vec<String> = e.field_errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "spec.groups[2].sidecars[1].name: `worker-io` is the name of the runtime container",
                "spec.groups[0].sidecars[0].name: `worker-io` is the name of a container of group `io`, which shares the pod in a tcp pipeline",
                "spec.groups[0].sidecars[0].ports[0].containerPort: port 9091 is taken by container `worker-io`: in a tcp pipeline every group's containers share the pod's network",
                "spec.groups[0].sidecars[0].ports[1].containerPort: port 7311 is taken by the hub: in a tcp pipeline every group's containers share the pod's network",
                "spec.groups[2].sidecars[0].name: `py` is the name of a container of group `cpu`, which shares the pod in a tcp pipeline",
                "spec.groups[2].sidecars[0].ports[0].containerPort: port 9000 is taken by sidecar `py`: in a tcp pipeline every group's containers share the pod's network",
            ]
        );
    }

    #[test]
    fn a_sidecar_may_not_mount_a_workers_keys() {
        let mut sp = orders_tcp();
        group_mut(&mut sp, "io").sidecars = Some(vec![sluice_crds::yaml::from_str(
            "{name: py, image: x, volumeMounts: [{name: keys-cpu, mountPath: /k}]}",
        )
        .unwrap()]);
        let e = desired(&sp, &OperatorSettings::default()).unwrap_err();
        let got: Vec<String> = e.field_errors().iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["spec.groups[2].sidecars[0].volumeMounts[0].name: sidecars may not mount the key ring"]
        );
    }
}

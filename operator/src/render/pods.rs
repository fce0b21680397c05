//! The runtime pods of a pipeline: one Deployment `P-<group>` per group
//! that runs in its own pods (the ingress group always; worker groups with
//! redis backends), its runtime container (image, args, env, probes,
//! resources) and the group's hardened sidecars, with the pipeline file, key
//! ring, Redis CA and node Secrets mounted as directories.
//!
//! The parts are offered one by one as well ([`worker_runtime`],
//! [`runtime_volumes`], [`workload`]) for the pod of a tcp pipeline, which
//! holds several runtime containers ([`super::tcp_pod`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use sluice_crds::{GroupRole, GroupSpec};

use super::context::Ctx;
use super::contract::{
    main_container, ADMIN_PORT, ENV_DRAIN_GRACE, ENV_DRAIN_TIMEOUT, ENV_INGRESS_ID, ENV_LOG_FORMAT,
    ENV_OTEL_EXPORTER_OTLP_ENDPOINT, ENV_OTEL_EXPORTER_OTLP_PROTOCOL, ENV_OTEL_RESOURCE_ATTRIBUTES,
    ENV_POD_NAME, INGRESS_PORT,
};
use super::pod_spec;
use super::redis;
use super::redis_acl;
use super::restricted;
use super::secret_refs::SecretRefUse;
use super::sidecars;
use crate::labels::{self, Component};
use crate::names;
use crate::settings::RuntimeTracing;

/// A duration in the runtime's flag syntax (`5s`, `1500ms`).
fn duration_arg(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn component_of(role: GroupRole) -> Component {
    match role {
        GroupRole::Ingress => Component::Ingress,
        GroupRole::Worker => Component::Worker,
    }
}

/// The keys of a `kubernetes.io/tls` Secret.
pub(crate) const TLS_CERT_KEY: &str = "tls.crt";
pub(crate) const TLS_KEY_KEY: &str = "tls.key";

pub(crate) fn ingress_container(ctx: &Ctx<'_>, g: &GroupSpec) -> Container {
    let drain = &ctx.settings.drain;
    let env = vec![
        // Names this pod's reply stream; a pod name is unique and dies with it.
        pod_spec::env_from_field(ENV_INGRESS_ID, "metadata.name"),
        pod_spec::env(ENV_DRAIN_GRACE, duration_arg(drain.ingress_grace)),
        pod_spec::env(ENV_DRAIN_TIMEOUT, duration_arg(drain.ingress_timeout)),
        pod_spec::env(ENV_LOG_FORMAT, "json"),
    ];
    let mut args = vec![
        "--pipeline".into(),
        pod_spec::pipeline_path(),
        "--listen".into(),
        format!("[::]:{INGRESS_PORT}"),
        "--keys".into(),
        pod_spec::KEYS_DIR.into(),
    ];
    // The pair is mounted where node Secrets are (see render::mod).
    let tls = ctx.spec.expose.as_ref().and_then(|e| e.tls_secret.as_ref());
    if let Some(secret) = tls {
        let file = |key: &str| format!("{}/{secret}/{key}", pod_spec::SECRETS_DIR);
        args.extend([
            "--tls-cert".into(),
            file(TLS_CERT_KEY),
            "--tls-key".into(),
            file(TLS_KEY_KEY),
        ]);
    }
    let image = &ctx.settings.images.ingress;
    let mut c = runtime_container(
        ctx,
        g,
        main_container(GroupRole::Ingress),
        image,
        args,
        env,
        ("http", INGRESS_PORT),
    );
    if tls.is_some() {
        // The port speaks only TLS: so do the kubelet's probes.
        for probe in [&mut c.readiness_probe, &mut c.liveness_probe]
            .into_iter()
            .flatten()
        {
            if let Some(get) = probe.http_get.as_mut() {
                get.scheme = Some("HTTPS".into());
            }
        }
    }
    c
}

/// The runtime container of a worker group's own pods.
pub(crate) fn worker_container(ctx: &Ctx<'_>, g: &GroupSpec) -> Container {
    worker_runtime(
        ctx,
        g,
        main_container(GroupRole::Worker),
        ("admin", ADMIN_PORT),
        Vec::new(),
    )
}

/// A `sluice-exec-worker` container of group `g` named `name`, serving its
/// admin endpoints (and probes) on the container port `admin`, with
/// `extra_args` after the common ones.
pub(crate) fn worker_runtime(
    ctx: &Ctx<'_>,
    g: &GroupSpec,
    name: &str,
    admin: (&str, i32),
    extra_args: Vec<String>,
) -> Container {
    let env = vec![
        pod_spec::env(
            ENV_DRAIN_TIMEOUT,
            duration_arg(ctx.settings.drain.worker_timeout),
        ),
        pod_spec::env(ENV_LOG_FORMAT, "json"),
    ];
    let mut args = vec![
        "--pipeline".into(),
        pod_spec::pipeline_path(),
        "--group".into(),
        g.name.clone(),
        "--keys".into(),
        pod_spec::KEYS_DIR.into(),
        "--admin".into(),
        format!("[::]:{}", admin.1),
    ];
    args.extend(extra_args);
    let image = &ctx.settings.images.worker;
    runtime_container(ctx, g, name, image, args, env, admin)
}

/// The variables that turn on the runtime's trace export, and the resource
/// attributes that tell its spans apart by namespace, pod, pipeline and
/// group. `service.name` is left to the runtime (its binary name).
///
/// Namespace, pipeline and group names are DNS labels or subdomains, so
/// they need no escaping in the `k=v,k=v` list, and no `$` in them can be
/// mistaken for a variable reference.
fn tracing_env(ctx: &Ctx<'_>, g: &GroupSpec, tracing: &RuntimeTracing) -> Vec<EnvVar> {
    let attributes = format!(
        "k8s.namespace.name={},k8s.pod.name=$({ENV_POD_NAME}),sluice.pipeline={},sluice.group={}",
        ctx.namespace, ctx.name, g.name
    );
    vec![
        // Before OTEL_RESOURCE_ATTRIBUTES: Kubernetes only expands references
        // to variables declared earlier in the list.
        pod_spec::env_from_field(ENV_POD_NAME, "metadata.name"),
        pod_spec::env_verbatim(ENV_OTEL_EXPORTER_OTLP_ENDPOINT, &tracing.endpoint),
        pod_spec::env(ENV_OTEL_EXPORTER_OTLP_PROTOCOL, tracing.protocol.as_str()),
        pod_spec::env(ENV_OTEL_RESOURCE_ATTRIBUTES, attributes),
    ]
}

/// The Redis user of a group's runtime containers.
fn redis_role(g: &GroupSpec) -> redis_acl::Role {
    match g.role {
        GroupRole::Ingress => redis_acl::Role::Ingress,
        _ => redis_acl::Role::Group(g.name.clone()),
    }
}

/// The runtime container of a group's pods: the group's image (or the
/// role's default), the role's args and env plus the Redis env and, with
/// trace export on, the `OTEL_*` env; one named port carrying both probes,
/// the group's resources and the restricted security context.
fn runtime_container(
    ctx: &Ctx<'_>,
    g: &GroupSpec,
    name: &str,
    default_image: &str,
    args: Vec<String>,
    mut env: Vec<EnvVar>,
    (port_name, port): (&str, i32),
) -> Container {
    env.extend(redis::runtime_env(ctx, &ctx.redis, &redis_role(g)));
    // Last, and only when on: without an endpoint the container carries no
    // tracing variable at all.
    if let Some(t) = &ctx.settings.tracing {
        env.extend(tracing_env(ctx, g, t));
    }
    Container {
        name: name.into(),
        image: Some(g.image.clone().unwrap_or_else(|| default_image.to_string())),
        image_pull_policy: ctx.settings.images.pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(port_name.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(pod_spec::readiness_http("/readyz", port_name)),
        liveness_probe: Some(pod_spec::liveness_http("/healthz", port_name)),
        resources: Some(pod_spec::resources_or_default(g.resources.as_ref())),
        security_context: Some(restricted::restricted_container()),
        ..Default::default()
    }
}

/// The Deployment of a group: `main` plus the group's sidecars, the
/// pipeline file, key ring, Redis CA and password (managed Redis) or CA
/// (external Redis with `caSecretRef`) and node Secrets mounted as
/// directories in `main` only.
pub(crate) fn deployment(
    ctx: &Ctx<'_>,
    g: &GroupSpec,
    replicas: Option<i32>,
    mut main: Container,
    termination_grace: i64,
    secret_refs: &[SecretRefUse],
) -> Deployment {
    let keys = (pod_spec::VOLUME_KEYS.to_string(), keys_secret(ctx, g));
    let (volumes, mounts) = runtime_volumes(ctx, g, keys, secret_refs);
    main.volume_mounts = Some(mounts);
    let mut containers = vec![main];
    containers.extend(sidecars_of(g));
    workload(ctx, g, replicas, containers, volumes, termination_grace)
}

/// The Secret a group's runtime containers mount at `/etc/sluice/keys`: the
/// group's derived keys, or the user's key ring (`keys: secretRef`).
pub(crate) fn keys_secret(ctx: &Ctx<'_>, g: &GroupSpec) -> String {
    if ctx.role_keys {
        names::role_keys(&ctx.name, &g.name)
    } else {
        ctx.key_secret.clone()
    }
}

/// The group's sidecars, hardened to join its pod.
pub(crate) fn sidecars_of(g: &GroupSpec) -> impl Iterator<Item = Container> + '_ {
    g.sidecars.iter().flatten().cloned().map(sidecars::harden)
}

/// The volumes a runtime container of group `g` needs and its mounts of
/// them: the pipeline file, `keys` (volume name, Secret) at
/// `/etc/sluice/keys`, `/tmp`, the Redis CA and password, and the node
/// Secrets of `secret_refs`.
pub(crate) fn runtime_volumes(
    ctx: &Ctx<'_>,
    g: &GroupSpec,
    (keys_volume, keys_secret): (String, String),
    secret_refs: &[SecretRefUse],
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let (secret_volumes, secret_mounts) = pod_spec::node_secret_mounts(secret_refs);
    let (ca_volume, ca_mount) = redis::ca_mount(ctx, &ctx.redis).unzip();
    let (auth_volume, auth_mount) = redis::auth_mount(ctx, &ctx.redis, &redis_role(g)).unzip();
    let mut mounts = vec![
        pod_spec::mount(pod_spec::VOLUME_PIPELINE, pod_spec::PIPELINE_DIR, true),
        pod_spec::mount(&keys_volume, pod_spec::KEYS_DIR, true),
        pod_spec::tmp_mount(),
    ];
    mounts.extend(ca_mount);
    mounts.extend(auth_mount);
    mounts.extend(secret_mounts);
    let mut volumes = vec![
        pod_spec::pipeline_volume(&names::pipeline_config(&ctx.name)),
        // 0440 with the pod's fsGroup: readable by the runtime user only.
        pod_spec::secret_volume(&keys_volume, &keys_secret, Some(0o440)),
        pod_spec::tmp_volume(),
    ];
    volumes.extend(ca_volume);
    volumes.extend(auth_volume);
    volumes.extend(secret_volumes);
    (volumes, mounts)
}

/// The Deployment `P-<group>` of group `g`'s pods running `containers`
/// (the first is the runtime container `kubectl` defaults to) over
/// `volumes`, with the restricted pod context, no API token and the
/// group's placement.
pub(crate) fn workload(
    ctx: &Ctx<'_>,
    g: &GroupSpec,
    replicas: Option<i32>,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
    termination_grace: i64,
) -> Deployment {
    let component = component_of(g.role);
    let main_name = containers
        .first()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    Deployment {
        metadata: ctx.meta(names::group(&ctx.name, &g.name), component, Some(&g.name)),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(labels::group_selector(&ctx.name, &g.name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::labels(&ctx.name, component, Some(&g.name))),
                    annotations: Some(BTreeMap::from([
                        (labels::CONFIG_HASH.to_string(), ctx.config_hash.clone()),
                        (labels::DEFAULT_CONTAINER.to_string(), main_name),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    // Runtime pods never talk to the API server.
                    automount_service_account_token: Some(false),
                    // Service links would inject variables such as
                    // SLUICE_*_PORT for a Service named sluice-*.
                    enable_service_links: Some(false),
                    security_context: Some(restricted::restricted_pod(pod_spec::RUNTIME_UID, true)),
                    termination_grace_period_seconds: Some(termination_grace),
                    image_pull_secrets: ctx.pull_secrets(),
                    node_selector: g.node_selector.clone(),
                    tolerations: g.tolerations.clone(),
                    affinity: g.affinity.clone(),
                    containers,
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::{
        app_protocol, deployment, examples, orders_redis, parse, pod_of, render, templates,
        with_everything,
    };
    use crate::render::{desired, Child};
    use crate::settings::OperatorSettings;

    #[test]
    fn memory_backends_mount_every_nodes_secrets_in_the_ingress_pods() {
        let mut sp = with_everything();
        sp.spec.backends = Default::default();
        let d = render(&sp);
        let t = templates(&d)[0].spec.as_ref().unwrap();
        let mounts = t.containers[0].volume_mounts.as_ref().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/etc/sluice/secrets/enrich-api"));
    }

    #[test]
    fn node_secrets_are_mounted_only_in_their_groups_pods() {
        let d = render(&with_everything());
        let has = |name: &str| {
            deployment(&d, name)
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| {
                    m.mount_path == "/etc/sluice/secrets/enrich-api" && m.read_only == Some(true)
                })
        };
        assert!(has("enrich-io"));
        assert!(!has("enrich-cpu"));
        assert!(!has("enrich-web"));
    }

    #[test]
    fn an_interfaces_bearer_tokens_are_mounted_in_the_ingress_pods_only() {
        let mut sp = with_everything();
        sp.spec.interfaces[0].auth = Some(
            sluice_crds::yaml::from_str("{bearer: {secretRef: {name: api-tokens, key: tokens}}}")
                .unwrap(),
        );
        let d = render(&sp);
        let mounts = |name: &str| {
            let pod = pod_of(&d, name);
            pod.containers[0]
                .volume_mounts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .any(|m| {
                    m.mount_path == "/etc/sluice/secrets/api-tokens" && m.read_only == Some(true)
                })
        };
        assert!(mounts("enrich-web"));
        assert!(!mounts("enrich-io") && !mounts("enrich-cpu"));
        // Only the named key is projected.
        let pod = pod_of(&d, "enrich-web");
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| {
                v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("api-tokens")
            })
            .expect("a volume of the tokens' Secret");
        let items = volume.secret.as_ref().unwrap().items.as_ref().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].key, "tokens");
        // The reconciler checks the Secret's opt-in like a node's.
        assert!(d.referenced_secrets.iter().any(
            |r| r.name == "api-tokens" && r.path == "spec.interfaces[0].auth.bearer.secretRef"
        ));
        // And the pipeline's own Secrets are refused.
        sp.spec.interfaces[0].auth = Some(
            sluice_crds::yaml::from_str(
                "{bearer: {secretRef: {name: enrich-ipc-keys, key: current}}}",
            )
            .unwrap(),
        );
        let e =
            crate::render::desired(&sp, &crate::settings::OperatorSettings::default()).unwrap_err();
        assert!(e.field_errors().iter().any(|f| f
            .path
            .starts_with("spec.interfaces[0].auth.bearer.secretRef")));
    }

    #[test]
    fn pods_that_terminate_tls_mount_the_pair_point_the_flags_at_it_and_probe_over_https() {
        let mut sp = orders_redis();
        sp.spec.expose = Some(sluice_crds::yaml::from_str("{tlsSecret: orders-tls}").unwrap());
        let d = render(&sp);
        let pod = pod_of(&d, "orders-redis-web");
        let c = &pod.containers[0];
        let args = c.args.as_deref().unwrap();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].as_str()
        };
        assert_eq!(
            after("--tls-cert"),
            "/etc/sluice/secrets/orders-tls/tls.crt"
        );
        assert_eq!(after("--tls-key"), "/etc/sluice/secrets/orders-tls/tls.key");
        for probe in [&c.readiness_probe, &c.liveness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| {
                v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("orders-tls")
            })
            .expect("a volume of the TLS Secret");
        let keys: Vec<_> = volume
            .secret
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| i.key.as_str())
            .collect();
        assert_eq!(keys, ["tls.crt", "tls.key"]);
        // Only the ingress pods get it; its owner must opt in.
        let worker = pod_of(&d, "orders-redis-cpu");
        assert!(!worker.volumes.as_ref().unwrap().iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("orders-tls")));
        assert!(d
            .referenced_secrets
            .iter()
            .any(|r| r.name == "orders-tls" && r.path == "spec.expose.tlsSecret"));
        assert_eq!(app_protocol(&d, "orders-redis"), "https");
        // With a WebSocket interface too: upgrades over TLS.
        let mut ws = sp.clone();
        ws.spec.interfaces[0].kind = sluice_crds::InterfaceKind::Websocket;
        assert_eq!(
            app_protocol(&render(&ws), "orders-redis"),
            "kubernetes.io/wss"
        );
        // The pipeline's own Secrets are refused.
        sp.spec.expose =
            Some(sluice_crds::yaml::from_str("{tlsSecret: orders-redis-ipc-keys}").unwrap());
        let e =
            crate::render::desired(&sp, &crate::settings::OperatorSettings::default()).unwrap_err();
        assert!(
            e.field_errors()
                .iter()
                .any(|f| f.path.starts_with("spec.expose.tlsSecret")),
            "{e:?}"
        );
    }

    #[test]
    fn runtime_pods_mount_pipeline_and_keys_as_directories_and_point_flags_at_them() {
        let d = render(&orders_redis());
        let pod = pod_of(&d, "orders-redis-cpu");
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            [
                "--pipeline",
                "/etc/sluice/pipeline/pipeline.yaml",
                "--group",
                "cpu",
                "--keys",
                "/etc/sluice/keys",
                "--admin",
                "[::]:9090"
            ]
        );
        let volumes = pod.volumes.unwrap();
        let keys = volumes.iter().find(|v| v.name == "keys").unwrap();
        let keys = keys.secret.as_ref().unwrap();
        assert_eq!(
            keys.secret_name.as_deref(),
            Some("orders-redis-ipc-keys-cpu"),
            "each group mounts its own derived keys, never the ring"
        );
        assert_eq!(keys.default_mode, Some(0o440));
        let sc = pod.security_context.as_ref().unwrap();
        assert_eq!(
            sc.fs_group, sc.run_as_user,
            "0440 files readable by the runtime user"
        );
        let cm = volumes.iter().find(|v| v.name == "pipeline").unwrap();
        assert_eq!(
            cm.config_map.as_ref().unwrap().name,
            "orders-redis-pipeline"
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
        let web = pod_of(&d, "orders-redis-web");
        assert_eq!(web.termination_grace_period_seconds, Some(40));
        let id = web.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == ENV_INGRESS_ID)
            .unwrap();
        assert_eq!(
            id.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
    }

    #[test]
    fn custom_images_and_placement_come_from_the_group() {
        let d = render(&with_everything());
        let pod = pod_of(&d, "enrich-io");
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("example.com/custom-worker:1")
        );
        assert_eq!(pod.node_selector.unwrap()["pool"], "io");
        assert_eq!(pod.containers[1].name, "py");
        assert_eq!(
            pod.containers[1]
                .security_context
                .as_ref()
                .unwrap()
                .run_as_user,
            Some(1000)
        );
        let cpu = pod_of(&d, "enrich-cpu");
        assert_eq!(
            cpu.containers[0].image,
            Some(OperatorSettings::default().images.worker)
        );
    }

    // === trace export ===

    const TRACING_VARS: [&str; 4] = [
        ENV_POD_NAME,
        ENV_OTEL_EXPORTER_OTLP_ENDPOINT,
        ENV_OTEL_EXPORTER_OTLP_PROTOCOL,
        ENV_OTEL_RESOURCE_ATTRIBUTES,
    ];

    fn tracing_on() -> OperatorSettings {
        OperatorSettings {
            tracing: Some(RuntimeTracing {
                endpoint: "http://otel-collector.observability:4318".into(),
                protocol: crate::settings::OtlpProtocol::HttpJson,
            }),
            ..OperatorSettings::default()
        }
    }

    fn tracing_vars(c: &Container) -> Vec<&EnvVar> {
        c.env
            .iter()
            .flatten()
            .filter(|e| TRACING_VARS.contains(&e.name.as_str()) || e.name.starts_with("OTEL_"))
            .collect()
    }

    #[test]
    fn with_an_otlp_endpoint_every_runtime_container_exports_traces_named_by_its_pod() {
        let d = desired(&with_everything(), &tracing_on()).unwrap();
        for (name, group, main) in [
            ("enrich-web", "web", "ingress"),
            ("enrich-cpu", "cpu", "worker"),
            ("enrich-io", "io", "worker"),
        ] {
            let pod = deployment(&d, name)
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap();
            let c = &pod.containers[0];
            assert_eq!(c.name, main);
            let vars = tracing_vars(c);
            let names: Vec<&str> = vars.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, TRACING_VARS, "{name}: declared in this order");
            let pod_name = vars[0].value_from.as_ref().unwrap().field_ref.as_ref();
            assert_eq!(pod_name.unwrap().field_path, "metadata.name", "{name}");
            let values: Vec<Option<&str>> = vars[1..].iter().map(|e| e.value.as_deref()).collect();
            let attributes = format!(
                "k8s.namespace.name=demo,k8s.pod.name=$(SLUICE_POD_NAME),\
                 sluice.pipeline=enrich,sluice.group={group}"
            );
            assert_eq!(
                values,
                [
                    Some("http://otel-collector.observability:4318"),
                    Some("http/json"),
                    Some(attributes.as_str()),
                ],
                "{name}"
            );
            for sidecar in &pod.containers[1..] {
                assert!(tracing_vars(sidecar).is_empty(), "sidecar {}", sidecar.name);
            }
        }
        // Managed Redis (the other pod template here) is not traced.
        let runtime_containers = templates(&d)
            .iter()
            .flat_map(|t| &t.spec.as_ref().unwrap().containers)
            .filter(|c| !tracing_vars(c).is_empty())
            .count();
        assert_eq!(runtime_containers, 3);
    }

    #[test]
    fn with_memory_backends_the_ingress_pods_are_traced_as_the_ingress_group() {
        let d = desired(
            &parse(include_str!("../../../examples/hello.yaml")),
            &tracing_on(),
        )
        .unwrap();
        let traced: Vec<&str> = templates(&d)
            .iter()
            .flat_map(|t| &t.spec.as_ref().unwrap().containers)
            .flat_map(tracing_vars)
            .filter(|e| e.name == ENV_OTEL_RESOURCE_ATTRIBUTES)
            .filter_map(|e| e.value.as_deref())
            .collect();
        assert_eq!(traced.len(), 1, "{traced:?}");
        assert!(
            traced[0].starts_with("k8s.namespace.name=demo,"),
            "{}",
            traced[0]
        );
        assert!(
            traced[0].ends_with(",sluice.pipeline=hello,sluice.group=web"),
            "{}",
            traced[0]
        );
    }

    #[test]
    fn without_an_otlp_endpoint_no_container_carries_a_tracing_variable() {
        for sp in examples() {
            for t in templates(&render(&sp)) {
                for c in &t.spec.as_ref().unwrap().containers {
                    assert!(tracing_vars(c).is_empty(), "{}", c.name);
                }
            }
        }
    }

    #[test]
    fn turning_tracing_on_changes_nothing_but_the_runtime_containers_tracing_variables() {
        for sp in examples() {
            let off = render(&sp);
            let mut on = desired(&sp, &tracing_on()).unwrap();
            for o in &mut on.objects {
                if let Child::Deployment(dep) = o {
                    let pod = dep.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
                    // The runtime containers: `main`, or a tcp pod's `ingress`
                    // and `worker-<group>`s.
                    let runtime = pod
                        .containers
                        .iter_mut()
                        .filter(|c| c.name.starts_with("ingress") || c.name.starts_with("worker"));
                    for c in runtime {
                        let env = c.env.as_mut().unwrap();
                        env.retain(|e| !TRACING_VARS.contains(&e.name.as_str()));
                    }
                }
            }
            assert_eq!(on.config_hash, off.config_hash);
            assert_eq!(on.to_yaml().unwrap(), off.to_yaml().unwrap());
        }
    }
}

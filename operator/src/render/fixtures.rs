//! Pipelines the renderer's unit tests share, and lookups into what
//! [`desired`] makes of them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use sluice_crds::{GroupSpec, StreamPipeline};

use super::{desired, Child, Desired};
use crate::settings::OperatorSettings;

pub(crate) const UID: &str = "7f3c1a52-0000-4000-8000-000000000001";

pub(crate) fn parse(yaml: &str) -> StreamPipeline {
    let mut sp: StreamPipeline = sluice_crds::yaml::from_str(yaml).unwrap();
    sp.metadata.namespace = Some("demo".into());
    sp.metadata.uid = Some(UID.into());
    sp
}

pub(crate) fn orders_redis() -> StreamPipeline {
    parse(include_str!("../../../examples/orders-redis.yaml"))
}

pub(crate) fn orders_tcp() -> StreamPipeline {
    parse(include_str!("../../../examples/orders-tcp.yaml"))
}

pub(crate) fn examples() -> Vec<StreamPipeline> {
    vec![
        parse(include_str!("../../../examples/hello.yaml")),
        parse(include_str!("../../../examples/orders.yaml")),
        orders_redis(),
        orders_tcp(),
        with_everything(),
    ]
}

/// A redis pipeline using sidecars, node Secrets, autoscaling, exposure.
pub(crate) fn with_everything() -> StreamPipeline {
    parse(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamPipeline
metadata: { name: enrich }
spec:
  backends: { queue: redis, kv: redis, reply: redis }
  redis: { persistence: none }
  expose:
    serviceType: LoadBalancer
    ingress: { host: enrich.example.com, className: nginx, tlsSecret: enrich-tls }
  interfaces:
    - { name: enrich, path: /v1/enrich, entry: parse, timeout: 5s }
  groups:
    - { name: web, role: ingress, replicas: 2 }
    - name: cpu
      role: worker
      autoscale: { minReplicas: 1, maxReplicas: 20 }
    - name: io
      role: worker
      replicas: 2
      image: example.com/custom-worker:1
      nodeSelector: { pool: io }
      autoscale: { engine: hpa, minReplicas: 0, maxReplicas: 4, targetCpuUtilization: 60 }
      sidecars:
        - name: py
          image: example.com/py:1
          securityContext: { runAsUser: 1000 }
  nodes:
    - { name: parse, group: cpu, uses: builtin/json-map, with: { template: { q: "${/q}" } }, next: enrich }
    - name: enrich
      group: io
      uses: builtin/http
      with:
        url: http://127.0.0.1:9000/enrich
        headersFrom:
          Authorization: { secretRef: { name: enrich-api, key: token } }
"#,
    )
}

pub(crate) fn render(sp: &StreamPipeline) -> Desired {
    desired(sp, &OperatorSettings::default()).unwrap()
}

pub(crate) fn deployment<'a>(d: &'a Desired, name: &str) -> &'a Deployment {
    d.objects
        .iter()
        .find_map(|o| match o {
            Child::Deployment(x) if o.name() == name => Some(x),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

/// The `appProtocol` of Service `name`'s one port.
pub(crate) fn app_protocol(d: &Desired, name: &str) -> String {
    d.objects
        .iter()
        .find_map(|o| match o {
            Child::Service(s) if o.name() == name => {
                s.spec.as_ref()?.ports.as_ref()?[0].app_protocol.clone()
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Service {name} with an appProtocol"))
}

/// The pod spec of Deployment `name`'s template.
pub(crate) fn pod_of(d: &Desired, name: &str) -> PodSpec {
    deployment(d, name)
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_else(|| panic!("Deployment {name} has no pod spec"))
}

pub(crate) fn templates(d: &Desired) -> Vec<&PodTemplateSpec> {
    d.objects.iter().filter_map(Child::pod_template).collect()
}

pub(crate) fn kinds(d: &Desired) -> Vec<(&'static str, &str)> {
    d.objects
        .iter()
        .map(|o| (o.kind().kind, o.name()))
        .collect()
}

pub(crate) fn group_mut<'a>(sp: &'a mut StreamPipeline, name: &str) -> &'a mut GroupSpec {
    sp.spec.groups.iter_mut().find(|g| g.name == name).unwrap()
}

/// `with_everything` on external Redis, with `ca` (YAML) as `caSecretRef`.
pub(crate) fn external_with_ca(ca: Option<&str>) -> StreamPipeline {
    let mut sp = with_everything();
    let ca = ca
        .map(|c| format!(", caSecretRef: {c}"))
        .unwrap_or_default();
    sp.spec.redis = sluice_crds::yaml::from_str(&format!(
        "{{mode: external, urlSecretRef: {{name: my-redis, key: url}}{ca}}}"
    ))
    .unwrap();
    sp
}

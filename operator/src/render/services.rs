//! How the ingress group is reached: the Service `P` in front of its pods
//! (type from `spec.expose.serviceType`) and, with `expose.ingress`, the
//! Ingress `P` with, per interface, its `Exact` path and, for HTTP and SSE
//! interfaces, the `Prefix` `<path>/requests` where asynchronous answers are
//! fetched and streams resumed.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::{GroupRole, GroupSpec, InterfaceKind, ServiceType};

use super::context::Ctx;
use super::contract::SERVICE_PORT;
use crate::labels::{self, Component};
use crate::names;

/// The Service `P` in front of the ingress pods, port [`SERVICE_PORT`] to
/// their `http` port.
pub(crate) fn ingress_service(ctx: &Ctx<'_>, g: &GroupSpec) -> Service {
    let type_ = match ctx
        .spec
        .expose
        .as_ref()
        .map(|e| e.service_type)
        .unwrap_or_default()
    {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: ctx.meta(
            names::ingress_service(&ctx.name),
            Component::Ingress,
            Some(&g.name),
        ),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(labels::group_selector(&ctx.name, &g.name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                app_protocol: Some(app_protocol(ctx).into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The port serves HTTP/1.1 and cleartext HTTP/2 by prior knowledge, and
/// WebSocket upgrades over HTTP/1.1. KEP-3726's values: `kubernetes.io/h2c`
/// lets proxies multiplex requests to the pods over HTTP/2; with a
/// WebSocket interface, `kubernetes.io/ws`, as a proxy that spoke HTTP/2 to
/// the pods would have to carry upgrades as extended CONNECT, which the
/// ingress does not serve. With `expose.tlsSecret` the pods speak TLS:
/// `https`, or `kubernetes.io/wss` with a WebSocket interface.
fn app_protocol(ctx: &Ctx<'_>) -> &'static str {
    let tls = ctx
        .spec
        .expose
        .as_ref()
        .is_some_and(|e| e.tls_secret.is_some());
    let websocket = ctx
        .spec
        .interfaces
        .iter()
        .any(|i| i.kind == InterfaceKind::Websocket);
    // Terminated by the pods: TLS on the wire, HTTP/2 or HTTP/1.1 by ALPN;
    // with a WebSocket interface, upgrades over TLS and HTTP/1.1.
    match (tls, websocket) {
        (true, true) => "kubernetes.io/wss",
        (true, false) => "https",
        (false, true) => "kubernetes.io/ws",
        (false, false) => "kubernetes.io/h2c",
    }
}

/// Paths per interface rather than `/`: the ingress port also serves
/// `/metrics`, `/healthz` and `/readyz`, which stay in-cluster.
pub(crate) fn ingress_resource(ctx: &Ctx<'_>) -> Option<Ingress> {
    let spec = ctx.spec.expose.as_ref()?.ingress.as_ref()?;
    let service = names::ingress_service(&ctx.name);
    let paths = ctx
        .spec
        .interfaces
        .iter()
        .flat_map(|i| {
            let answers = matches!(i.kind, InterfaceKind::Http | InterfaceKind::Sse).then(|| {
                (
                    format!("{}/requests", i.path.trim_end_matches('/')),
                    "Prefix",
                )
            });
            std::iter::once((i.path.clone(), "Exact")).chain(answers)
        })
        .map(|(path, path_type)| HTTPIngressPath {
            path: Some(path),
            path_type: path_type.into(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: service.clone(),
                    port: Some(ServiceBackendPort {
                        name: Some("http".into()),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
        })
        .collect();
    let ingress_group = ctx
        .spec
        .groups
        .iter()
        .find(|g| g.role == GroupRole::Ingress)
        .map(|g| g.name.as_str());
    Some(Ingress {
        metadata: ctx.meta(service, Component::Ingress, ingress_group),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            tls: spec.tls_secret.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use crate::render::fixtures::{app_protocol, orders_redis, render, with_everything};
    use crate::render::Child;

    #[test]
    fn exposure_adds_an_ingress_with_each_interface_and_its_answers_and_a_pdb_for_replicas() {
        let d = render(&with_everything());
        let Some(Child::Ingress(ing)) = d.objects.iter().find(|o| o.kind().kind == "Ingress")
        else {
            panic!("no Ingress")
        };
        let s = ing.spec.as_ref().unwrap();
        assert_eq!(s.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(
            s.tls.as_ref().unwrap()[0].secret_name.as_deref(),
            Some("enrich-tls")
        );
        let rule = &s.rules.as_ref().unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("enrich.example.com"));
        let paths = &rule.http.as_ref().unwrap().paths;
        let paths: Vec<_> = paths
            .iter()
            .map(|p| (p.path.as_deref().unwrap(), p.path_type.as_str()))
            .collect();
        assert_eq!(
            paths,
            [("/v1/enrich", "Exact"), ("/v1/enrich/requests", "Prefix")]
        );
        assert!(d.contains("PodDisruptionBudget", "enrich-web"));
        let Some(Child::Service(svc)) = d.objects.iter().find(|o| o.name() == "enrich") else {
            panic!()
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().type_.as_deref(),
            Some("LoadBalancer")
        );
        assert_eq!(app_protocol(&d, "enrich"), "kubernetes.io/h2c");
        // A WebSocket interface: its path only, and a Service that says the
        // port carries WebSocket upgrades.
        let mut sp = with_everything();
        sp.spec.interfaces[0].kind = sluice_crds::InterfaceKind::Websocket;
        let d = render(&sp);
        let Some(Child::Ingress(ing)) = d.objects.iter().find(|o| o.kind().kind == "Ingress")
        else {
            panic!("no Ingress")
        };
        let paths = &ing.spec.as_ref().unwrap().rules.as_ref().unwrap()[0]
            .http
            .as_ref()
            .unwrap()
            .paths;
        assert_eq!(paths.len(), 1);
        assert_eq!(paths[0].path.as_deref(), Some("/v1/enrich"));
        assert_eq!(app_protocol(&d, "enrich"), "kubernetes.io/ws");
        // An SSE interface: its path, and where streams are resumed; any
        // HTTP version carries it.
        let mut sp = with_everything();
        sp.spec.interfaces[0].kind = sluice_crds::InterfaceKind::Sse;
        let d = render(&sp);
        let Some(Child::Ingress(ing)) = d.objects.iter().find(|o| o.kind().kind == "Ingress")
        else {
            panic!("no Ingress")
        };
        let paths: Vec<_> = ing.spec.as_ref().unwrap().rules.as_ref().unwrap()[0]
            .http
            .as_ref()
            .unwrap()
            .paths
            .iter()
            .map(|p| p.path.clone().unwrap())
            .collect();
        assert_eq!(paths, ["/v1/enrich", "/v1/enrich/requests"]);
        assert_eq!(app_protocol(&d, "enrich"), "kubernetes.io/h2c");
        // A single ingress replica gets no PDB (it would block every drain).
        assert!(!render(&orders_redis()).contains("PodDisruptionBudget", "orders-redis-web"));
    }
}

//! Defaulting of built-in types: the handful of defaults clients and controllers read back
//! (Deployment/StatefulSet replicas and strategies, Service type and cluster IP, namespace
//! phase and finalizer, PVC binding). Pod template defaults are not modelled.

use rand::Rng;
use serde_json::{json, Value};

use crate::resources::ResourceType;
use crate::store::State;

fn default_at(obj: &mut Value, pointer: &str, v: Value) {
    if obj.pointer(pointer).is_some() {
        return;
    }
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let mut cur = obj;
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        if i == parts.len() - 1 {
            cur[*p] = v;
            return;
        }
        if cur.get(*p).is_none() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

/// Fill in defaults for a built-in object (create and update alike).
pub(crate) fn apply(_st: &State, rt: &ResourceType, obj: &mut Value, old: Option<&Value>) {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => {
            if old.is_none() {
                default_at(obj, "/spec/finalizers", json!(["kubernetes"]));
            }
            default_at(obj, "/status/phase", json!("Active"));
        }
        ("apps", "deployments") => {
            default_at(obj, "/spec/replicas", json!(1));
            default_at(obj, "/spec/progressDeadlineSeconds", json!(600));
            default_at(obj, "/spec/revisionHistoryLimit", json!(10));
            default_at(obj, "/spec/strategy/type", json!("RollingUpdate"));
            if obj.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
                default_at(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
                default_at(
                    obj,
                    "/spec/strategy/rollingUpdate/maxUnavailable",
                    json!("25%"),
                );
            }
        }
        ("apps", "statefulsets") => {
            default_at(obj, "/spec/replicas", json!(1));
            default_at(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
            default_at(obj, "/spec/revisionHistoryLimit", json!(10));
            default_at(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if obj
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                == Some("RollingUpdate")
            {
                default_at(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/partition",
                    json!(0),
                );
            }
            default_at(
                obj,
                "/spec/persistentVolumeClaimRetentionPolicy/whenDeleted",
                json!("Retain"),
            );
            default_at(
                obj,
                "/spec/persistentVolumeClaimRetentionPolicy/whenScaled",
                json!("Retain"),
            );
        }
        ("", "services") => {
            default_at(obj, "/spec/type", json!("ClusterIP"));
            default_at(obj, "/spec/sessionAffinity", json!("None"));
            let external =
                obj.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
            if !external {
                if obj.pointer("/spec/clusterIP").is_none() {
                    let ip = old
                        .and_then(|o| o.pointer("/spec/clusterIP").cloned())
                        .unwrap_or_else(|| {
                            let mut rng = rand::thread_rng();
                            json!(format!(
                                "10.96.{}.{}",
                                rng.gen_range(0..255),
                                rng.gen_range(1..255)
                            ))
                        });
                    default_at(obj, "/spec/clusterIP", ip);
                }
                if let Some(ip) = obj.pointer("/spec/clusterIP").cloned() {
                    default_at(obj, "/spec/clusterIPs", json!([ip]));
                }
                default_at(obj, "/spec/ipFamilies", json!(["IPv4"]));
                default_at(obj, "/spec/ipFamilyPolicy", json!("SingleStack"));
            }
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if p.get("protocol").is_none() {
                        p["protocol"] = json!("TCP");
                    }
                    if p.get("targetPort").is_none() {
                        if let Some(port) = p.get("port").cloned() {
                            p["targetPort"] = port;
                        }
                    }
                }
            }
        }
        ("", "persistentvolumeclaims") => {
            if obj.pointer("/status/phase").is_none() {
                let modes = obj
                    .pointer("/spec/accessModes")
                    .cloned()
                    .unwrap_or(json!([]));
                let cap = obj
                    .pointer("/spec/resources/requests")
                    .cloned()
                    .unwrap_or(json!({}));
                obj["status"] = json!({"phase": "Bound", "accessModes": modes, "capacity": cap});
            }
            default_at(obj, "/spec/volumeMode", json!("Filesystem"));
        }
        ("", "secrets") => {
            default_at(obj, "/type", json!("Opaque"));
            // stringData is write-only: merged into data (base64), never stored
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine;
                for (k, v) in sd {
                    let raw = v.as_str().unwrap_or_default().as_bytes().to_vec();
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(raw));
                }
            }
        }
        _ => {}
    }
}

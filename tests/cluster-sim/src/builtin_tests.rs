//! Tests of `builtin`: wrong types, unknown fields under each `fieldValidation`, apply typing,
//! and no false positives on the objects the operator, the chart and kubectl write.

use serde_json::{json, Value};

use super::*;
use crate::resources::Registry;

fn rt(api_version: &str, kind: &str) -> ResourceType {
    (*Registry::default().find_kind(api_version, kind).unwrap()).clone()
}

fn deployment(extra_container: Value) -> Value {
    let mut c = json!({"name": "web", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent"});
    if let (Some(c), Some(x)) = (c.as_object_mut(), extra_container.as_object()) {
        c.extend(x.clone());
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [c]}}}
    })
}

fn admit_with(
    obj: &mut Value,
    v: FieldValidation,
    d: Decoding,
) -> (Result<(), ApiError>, Vec<String>) {
    let w = Warnings::default();
    let r = admit(&rt("apps/v1", "Deployment"), obj, None, v, d, &w);
    (r, w.all())
}

#[test]
fn a_wrongly_typed_value_is_a_400_naming_the_go_struct_field_whatever_field_validation_says() {
    for v in [
        FieldValidation::Strict,
        FieldValidation::Warn,
        FieldValidation::Ignore,
    ] {
        let mut d = deployment(json!({}));
        d["spec"]["replicas"] = json!("three");
        let err = admit_with(&mut d, v, Decoding::Body).0.unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(err.reason, "BadRequest");
        assert_eq!(
            err.message,
            "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
        );
    }
    let mut d = deployment(json!({}));
    d["spec"]["template"]["spec"]["containers"] = json!({});
    let err = admit_with(&mut d, FieldValidation::Warn, Decoding::Body)
        .0
        .unwrap_err();
    assert!(
        err.message.ends_with("json: cannot unmarshal object into Go struct field PodSpec.spec.template.spec.containers of type []v1.Container"),
        "{}",
        err.message
    );
    let mut d = deployment(json!({"ports": [{"containerPort": "http"}]}));
    let err = admit_with(&mut d, FieldValidation::Warn, Decoding::Body)
        .0
        .unwrap_err();
    assert!(
        err.message.ends_with("json: cannot unmarshal string into Go struct field ContainerPort.spec.template.spec.containers.ports.containerPort of type int32"),
        "{}",
        err.message
    );
    let mut d = deployment(json!({}));
    d["metadata"]["labels"]["tier"] = json!(3);
    let err = admit_with(&mut d, FieldValidation::Warn, Decoding::Body)
        .0
        .unwrap_err();
    assert!(
        err.message.ends_with("json: cannot unmarshal number into Go struct field ObjectMeta.metadata.labels of type string"),
        "{}",
        err.message
    );
    let mut d = deployment(json!({}));
    d["spec"]["replicas"] = json!(1.5);
    let err = admit_with(&mut d, FieldValidation::Warn, Decoding::Body)
        .0
        .unwrap_err();
    assert!(err.message.ends_with("json: cannot unmarshal number 1.5 into Go struct field DeploymentSpec.spec.replicas of type int32"), "{}", err.message);
}

#[test]
fn after_a_patch_a_wrong_type_is_a_422_on_field_patch() {
    let mut d = deployment(json!({}));
    d["spec"]["paused"] = json!("yes");
    let err = admit_with(&mut d, FieldValidation::Warn, Decoding::Patch)
        .0
        .unwrap_err();
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err
        .message
        .starts_with(" \"\" is invalid: patch: Invalid value: \"{"));
    assert!(err.message.ends_with(": json: cannot unmarshal string into Go struct field DeploymentSpec.spec.paused of type bool"), "{}", err.message);
    assert_eq!(err.details.unwrap()["causes"][0]["field"], "patch");
}

#[test]
fn unknown_fields_follow_field_validation() {
    let unknown = json!({"imagePullPolicyy": "Always"});
    let mut d = deployment(unknown.clone());
    d["spec"]["extra"] = json!({"a": 1});
    let (r, _) = admit_with(&mut d.clone(), FieldValidation::Strict, Decoding::Body);
    let err = r.unwrap_err();
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"spec.extra\", unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""
    );

    let mut warned = d.clone();
    let (r, warnings) = admit_with(&mut warned, FieldValidation::Warn, Decoding::Body);
    r.unwrap();
    assert_eq!(
        warnings,
        vec![
            "unknown field \"spec.extra\"".to_string(),
            "unknown field \"spec.template.spec.containers[0].imagePullPolicyy\"".to_string()
        ]
    );
    assert_eq!(
        warned,
        deployment(json!({})),
        "unknown fields dropped, the rest kept"
    );

    let mut ignored = d.clone();
    let (r, warnings) = admit_with(&mut ignored, FieldValidation::Ignore, Decoding::Body);
    r.unwrap();
    assert!(warnings.is_empty());
    assert_eq!(ignored, deployment(json!({})));

    let (r, _) = admit_with(&mut d, FieldValidation::Strict, Decoding::Patch);
    let err = r.unwrap_err();
    assert_eq!(err.code, 422);
    assert!(err.message.ends_with(": strict decoding error: unknown field \"spec.extra\", unknown field \"spec.template.spec.containers[0].imagePullPolicyy\""), "{}", err.message);
}

#[test]
fn an_unknown_field_is_reported_even_with_a_null_value() {
    let mut d = deployment(json!({}));
    d["spec"]["bogus"] = Value::Null;
    let (r, _) = admit_with(&mut d, FieldValidation::Strict, Decoding::Body);
    assert!(r
        .unwrap_err()
        .message
        .contains("unknown field \"spec.bogus\""));
}

#[test]
fn an_apply_body_is_typed_before_merging_unknown_fields_are_a_500() {
    let rt = rt("apps/v1", "Deployment");
    let body = deployment(json!({"imagePullPolicyy": "Always"}));
    let err = check_apply(&rt, Some("ns"), "web", &body).unwrap_err();
    assert_eq!(err.code, 500);
    assert_eq!(
        err.message,
        "failed to create typed patch object (ns/web; apps/v1, Kind=Deployment): .spec.template.spec.containers[name=\"web\"].imagePullPolicyy: field not declared in schema"
    );
    let mut two = body.clone();
    two["spec"]["replicas"] = json!("lots");
    two["spec"]["x"] = json!(1);
    let err = check_apply(&rt, Some("ns"), "web", &two).unwrap_err();
    assert!(
        err.message.contains(
            "): errors:\n  .spec.replicas: expected numeric (int or float), got string\n  "
        ),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("\n  .spec.x: field not declared in schema"),
        "{}",
        err.message
    );
    check_apply(&rt, Some("ns"), "web", &deployment(json!({}))).unwrap();
    // a partial body is fine: apply sends only what the manager owns
    check_apply(&rt, Some("ns"), "web", &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}})).unwrap();
}

#[test]
fn secret_data_must_be_base64_and_quantities_scalars() {
    let w = Warnings::default();
    let secret = rt("v1", "Secret");
    let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "not base64!"}});
    let err = admit(
        &secret,
        &mut s,
        None,
        FieldValidation::Warn,
        Decoding::Body,
        &w,
    )
    .unwrap_err();
    assert_eq!(err.message, "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 3");
    let mut ok = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "aGk="}, "stringData": {"x": "y"}, "type": "Opaque"});
    admit(
        &secret,
        &mut ok,
        None,
        FieldValidation::Strict,
        Decoding::Body,
        &w,
    )
    .unwrap();
    let mut d = deployment(
        json!({"resources": {"limits": {"cpu": 1, "memory": "1Gi"}, "requests": {"cpu": {"x": 1}}}}),
    );
    let err = admit_with(&mut d, FieldValidation::Warn, Decoding::Body)
        .0
        .unwrap_err();
    assert!(err.message.ends_with("cannot be handled as a Deployment: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"), "{}", err.message);
    let mut d = deployment(
        json!({"ports": [{"containerPort": 80}], "readinessProbe": {"httpGet": {"port": "http", "path": "/"}}}),
    );
    admit_with(&mut d, FieldValidation::Strict, Decoding::Body)
        .0
        .unwrap();
    let mut d = deployment(json!({"readinessProbe": {"httpGet": {"port": 1.5}}}));
    let err = admit_with(&mut d, FieldValidation::Warn, Decoding::Body)
        .0
        .unwrap_err();
    assert!(err.message.ends_with("json: cannot unmarshal number 1.5 into Go struct field HTTPGetAction.spec.template.spec.containers.readinessProbe.httpGet.port of type int32"), "{}", err.message);
}

/// Every kind the stand-in serves, as clients write it (and as the stand-in's own controllers
/// write status): nothing is unknown, nothing is wrongly typed.
#[test]
fn realistic_objects_of_every_served_kind_have_no_false_positives() {
    let ts = "2025-01-01T00:00:00Z";
    let managed = json!([{"manager": "op", "operation": "Apply", "apiVersion": "apps/v1", "time": ts, "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]);
    let meta = json!({"name": "x", "namespace": "ns", "uid": "u", "resourceVersion": "1", "generation": 1,
        "creationTimestamp": ts, "labels": {"a": "b"}, "annotations": {"c": "d"}, "finalizers": ["f"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "K", "name": "o", "uid": "u2", "controller": true, "blockOwnerDeletion": true}],
        "managedFields": managed});
    let pod_spec = json!({
        "serviceAccountName": "sa", "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 30,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [{"name": "init", "image": "busybox", "command": ["sh", "-c", "true"]}],
        "containers": [{"name": "c", "image": "i", "args": ["--x"], "env": [{"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "envFrom": [{"configMapRef": {"name": "cm"}}],
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": 128974848}, "limits": {"memory": "1Gi"}},
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
            "livenessProbe": {"tcpSocket": {"port": 8080}}, "startupProbe": {"exec": {"command": ["true"]}},
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}, {"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420}},
            {"name": "sec", "secret": {"secretName": "s"}}, {"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}},
            {"name": "proj", "projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 3600}}]}}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"a": "b"}}}}]}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}], "nodeSelector": {"n": "m"},
        "imagePullSecrets": [{"name": "reg"}], "priorityClassName": "p", "dnsPolicy": "ClusterFirst", "restartPolicy": "Always"});
    let template =
        json!({"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}, "spec": pod_spec});
    let cond = json!({"type": "Available", "status": "True", "reason": "r", "message": "m", "lastUpdateTime": ts, "lastTransitionTime": ts});
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"a": "b"}, "binaryData": {"b": "aGk="}, "immutable": false}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "data": {"a": "aGk="}, "stringData": {"b": "c"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta, "automountServiceAccountToken": false, "imagePullSecrets": [{"name": "r"}]}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None", "selector": {"a": "b"}, "publishNotReadyAddresses": true,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}, {"port": 81, "targetPort": 8081}]}, "status": {"loadBalancer": {}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
            "volumeMode": "Filesystem", "resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec, "status": {"phase": "Running", "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": ts}], "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "i", "imageID": "", "started": true, "state": {"running": {"startedAt": ts}}}]}}),
        json!({"apiVersion": "v1", "kind": "Event", "metadata": meta, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "ns", "uid": "u"},
            "reason": "Started", "message": "m", "type": "Normal", "count": 1, "firstTimestamp": ts, "lastTimestamp": ts, "source": {"component": "c"}, "reportingComponent": "c", "reportingInstance": "i"}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": template,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600, "minReadySeconds": 0, "paused": false},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "unavailableReplicas": 0, "conditions": [cond]}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": {"replicas": 1, "serviceName": "s", "selector": {"matchLabels": {"a": "b"}}, "template": template,
            "podManagementPolicy": "OrderedReady", "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}, "revisionHistoryLimit": 10,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]},
            "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "currentReplicas": 1, "updatedReplicas": 1, "currentRevision": "r", "updateRevision": "r", "collisionCount": 0}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": template},
            "status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 1}}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta, "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": {"podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"x": "y"}}}], "ports": [{"port": 8080, "protocol": "TCP"}, {"port": "http"}]}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["h"], "secretName": "s"}],
            "rules": [{"host": "h", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "s", "port": {"number": 80}}}}]}}]}}),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
            "minReplicas": 1, "maxReplicas": 5, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
            {"type": "External", "external": {"metric": {"name": "m", "selector": {"matchLabels": {"a": "b"}}}, "target": {"type": "AverageValue", "averageValue": "30"}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}}),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": {"holderIdentity": "h", "leaseDurationSeconds": 15, "acquireTime": "2025-01-01T00:00:00.000000Z", "renewTime": "2025-01-01T00:00:00.000000Z", "leaseTransitions": 0}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "p", "allowVolumeExpansion": true, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer", "parameters": {"a": "b"}}),
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": meta, "eventTime": "2025-01-01T00:00:00.000000Z", "reason": "R", "note": "n", "type": "Normal",
            "action": "Reconcile", "reportingController": "c", "reportingInstance": "i", "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "ns", "uid": "u"},
            "series": {"count": 2, "lastObservedTime": "2025-01-01T00:00:00.000000Z"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["x"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta, "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}, {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "g"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "r"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "u"}]}),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "things.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced", "names": {"kind": "Thing", "plural": "things", "shortNames": ["th"], "categories": ["all"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                "additionalPrinterColumns": [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "properties": {"spec": {"type": "object", "required": ["a"],
                    "x-kubernetes-validations": [{"rule": "self.a > 0", "message": "m"}],
                    "properties": {"a": {"type": "integer", "default": 1, "minimum": 0}, "b": {"type": "string", "enum": ["x", "y"], "pattern": "^x"},
                        "c": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "string"}}, "x-kubernetes-list-type": "atomic"},
                        "d": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                        "e": {"type": "object", "additionalProperties": true}, "f": {"type": "object", "default": {"k": [1, "two", null]}}}}}}}}]},
            "status": {"acceptedNames": {"kind": "Thing", "plural": "things"}, "storedVersions": ["v1"],
                "conditions": [{"type": "Established", "status": "True", "reason": "r", "message": "m", "lastTransitionTime": ts}]}}),
    ];
    let w = Warnings::default();
    for obj in objects {
        let (api_version, kind) = (
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let rt = rt(api_version, kind);
        let mut checked = obj.clone();
        admit(
            &rt,
            &mut checked,
            None,
            FieldValidation::Strict,
            Decoding::Body,
            &w,
        )
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(checked, obj, "{kind}: nothing dropped");
        check_apply(&rt, Some("ns"), "x", &obj).unwrap_or_else(|e| panic!("{kind} apply: {e}"));
    }
    assert!(w.all().is_empty());
}

/// A CRD nests JSONSchemaProps as deep as a schema goes: the walk neither overflows the stack
/// nor refuses it.
#[test]
fn a_deeply_nested_crd_schema_is_walked_without_overflow() {
    let levels = 4_900;
    let run = move || {
        let mut node = json!({"type": "string"});
        for _ in 0..levels {
            // built by moving, not with json!'s interpolation (which serializes a deep copy)
            let mut props = serde_json::Map::new();
            props.insert("n".into(), node);
            let mut outer = json!({"type": "object"});
            outer["properties"] = Value::Object(props);
            node = outer;
        }
        let mut crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "deep.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Deep", "plural": "deep"}, "versions": [{"name": "v1", "served": true, "storage": true,
            "schema": {}}]}});
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = node;
        let rt = rt("apiextensions.k8s.io/v1", "CustomResourceDefinition");
        // the walk runs on this thread's small stack and must grow its own
        let r = admit(
            &rt,
            &mut crd,
            None,
            FieldValidation::Strict,
            Decoding::Body,
            &Warnings::default(),
        );
        // dropping a value this deep recurses too
        stacker::grow(64 << 20, move || drop(crd));
        r
    };
    let r = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
    r.unwrap();
}

#[test]
fn field_validation_parses_like_upstream() {
    assert_eq!(
        FieldValidation::parse(None, "CreateOptions").unwrap(),
        FieldValidation::Warn
    );
    assert_eq!(
        FieldValidation::parse(Some("Strict"), "CreateOptions").unwrap(),
        FieldValidation::Strict
    );
    assert_eq!(
        FieldValidation::parse(Some("Ignore"), "PatchOptions").unwrap(),
        FieldValidation::Ignore
    );
    let err = FieldValidation::parse(Some("strict"), "PatchOptions").unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(err.message, "PatchOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"strict\": supported values: \"Ignore\", \"Strict\", \"Warn\"");
}

/// Where each row's type lives in an object of a served kind, and a valid value for the field.
fn host(row: &crate::feature_gates::Row) -> (Value, &'static str, Value) {
    let pod_template = |spec: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": spec}}})
    };
    let containers = |c: Value| pod_template(json!({"containers": [c]}));
    let value = match row.field {
        "stopSignal" => json!("SIGTERM"),
        "resources" => json!({"limits": {"cpu": "1"}}),
        "image" => json!({"reference": "registry.example/data:1"}),
        "supplementalGroupsPolicy" => json!("Strict"),
        "seLinuxChangePolicy" => json!("Recursive"),
        "tolerance" => json!("0.05"),
        "strategy" => json!("OldestEmulationVersion"),
        "preferredHolder" => json!("h"),
        "resizePolicy" => json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"}]),
        "hostUsers" => json!(false),
        "recursiveReadOnly" => json!("Enabled"),
        "matchLabelKeys" | "mismatchLabelKeys" => json!(["app"]),
        "resourceClaims" | "claims" => json!([{"name": "gpu"}]),
        "trafficDistribution" => json!("PreferClose"),
        "volumeAttributesClassName" => json!("gold"),
        "maxUnavailable" => json!(1),
        other => panic!("no sample value for {other}"),
    };
    let short = row.definition.rsplit('.').next().unwrap();
    let (obj, at) = match short {
        "Lifecycle" => (containers(json!({"name": "c", "image": "i", "lifecycle": {}})), "/spec/template/spec/containers/0/lifecycle"),
        "PodSpec" => (pod_template(json!({"containers": [{"name": "c", "image": "i"}]})), "/spec/template/spec"),
        "Volume" => (pod_template(json!({"containers": [{"name": "c", "image": "i"}], "volumes": [{"name": "v"}]})), "/spec/template/spec/volumes/0"),
        "PodSecurityContext" => (pod_template(json!({"containers": [{"name": "c", "image": "i"}], "securityContext": {}})), "/spec/template/spec/securityContext"),
        "Container" => (containers(json!({"name": "c", "image": "i"})), "/spec/template/spec/containers/0"),
        "VolumeMount" => (containers(json!({"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/v"}]})), "/spec/template/spec/containers/0/volumeMounts/0"),
        "ResourceRequirements" => (containers(json!({"name": "c", "image": "i", "resources": {}})), "/spec/template/spec/containers/0/resources"),
        "PodAffinityTerm" => (pod_template(json!({"containers": [{"name": "c", "image": "i"}], "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone"}]}}})),
            "/spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/0"),
        "HPAScalingRules" => (json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 3, "behavior": {"scaleUp": {}}}}), "/spec/behavior/scaleUp"),
        "LeaseSpec" => (json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {}}), "/spec"),
        "ServiceSpec" => (json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}), "/spec"),
        "PersistentVolumeClaimSpec" => (json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "p"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}), "/spec"),
        "RollingUpdateStatefulSetStrategy" => (json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "serviceName": "s", "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {}}}}), "/spec/updateStrategy/rollingUpdate"),
        other => panic!("no host object for {other}"),
    };
    let mut with = obj;
    with.pointer_mut(at).unwrap()[row.field] = value;
    (with, at, json!(row.field))
}

/// Every row of the table: a field newer than 1.30 is unknown (warned and dropped; refused
/// under Strict; "not declared" in an apply), a field whose gate is off in 1.30 is dropped
/// silently, and kept on an update whose old object already used it.
#[test]
fn fields_of_the_newer_bindings_are_unknown_or_dropped_as_at_1_30() {
    use crate::feature_gates::{Served, ROWS};
    for row in ROWS {
        let (obj, at, field) = host(row);
        let field = field.as_str().unwrap();
        let rt = rt(
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        let mut admitted = obj.clone();
        let w = Warnings::default();
        admit(
            &rt,
            &mut admitted,
            None,
            FieldValidation::Warn,
            Decoding::Body,
            &w,
        )
        .unwrap_or_else(|e| panic!("{row:?}: {e}"));
        assert!(
            admitted.pointer(at).unwrap().get(field).is_none(),
            "{row:?}: dropped"
        );
        let dotted = at
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s.parse::<usize>() {
                Ok(i) => format!("[{i}]"),
                Err(_) => format!(".{s}"),
            })
            .collect::<String>();
        let path = format!("{}.{field}", dotted.trim_start_matches('.'));
        match row.served {
            Served::Unknown => {
                assert_eq!(
                    w.all(),
                    vec![format!("unknown field \"{path}\"")],
                    "{row:?}"
                );
                let err = admit(
                    &rt,
                    &mut obj.clone(),
                    None,
                    FieldValidation::Strict,
                    Decoding::Body,
                    &w,
                )
                .unwrap_err();
                assert!(
                    err.message.contains(&format!("unknown field \"{path}\"")),
                    "{row:?}: {}",
                    err.message
                );
                let err = check_apply(&rt, None, "x", &obj).unwrap_err();
                assert!(
                    err.message.contains("field not declared in schema"),
                    "{row:?}: {}",
                    err.message
                );
            }
            Served::Dropped => {
                assert!(
                    w.all().is_empty(),
                    "{row:?}: dropped silently: {:?}",
                    w.all()
                );
                admit(
                    &rt,
                    &mut obj.clone(),
                    None,
                    FieldValidation::Strict,
                    Decoding::Body,
                    &w,
                )
                .unwrap();
                check_apply(&rt, None, "x", &obj).unwrap();
                let mut kept = obj.clone();
                admit(
                    &rt,
                    &mut kept,
                    Some(&obj),
                    FieldValidation::Warn,
                    Decoding::Body,
                    &w,
                )
                .unwrap();
                assert_eq!(kept, obj, "{row:?}: kept when the old object used it");
            }
        }
    }
}

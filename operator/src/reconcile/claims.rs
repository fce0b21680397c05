//! The volume claim templates of managed Redis's StatefulSet: how they
//! change between the live and the desired copy, and the in-place expansion
//! of the claims when they grow (the API server refuses any change of a
//! StatefulSet's templates, so each kind of change has its own way round).

use super::*;

/// How the volume claim templates of a StatefulSet change from its live
/// copy to the desired one. The API server refuses any change of them on a
/// StatefulSet, so each calls for its own way round.
#[derive(Debug, PartialEq)]
pub(super) enum ClaimChange {
    /// The same claims of the same sizes (in whatever spelling).
    Same,
    /// The same claims, some larger: `(template, new size)`. The claims are
    /// expanded in place, the StatefulSet replaced without its pods.
    Grow(Vec<(String, String)>),
    /// A claim would shrink, which no volume can, or move to another
    /// StorageClass, which a bound claim cannot: refused, the StatefulSet is
    /// left as it is. `(reason, message)`.
    Refused(&'static str, String),
    /// Claims added or removed (persistence switched on or off): the
    /// StatefulSet is recreated; the retention policy keeps the volumes.
    Replace,
}

pub(super) fn claim_change(live: &Value, desired: &Value) -> ClaimChange {
    let (live, desired) = (claim_templates(live), claim_templates(desired));
    let names = |v: &[Claim]| v.iter().map(|(n, _, _)| n.clone()).collect::<Vec<_>>();
    if names(&live) != names(&desired) {
        return ClaimChange::Replace;
    }
    let mut grow = Vec::new();
    for ((name, was, was_class), (_, is, is_class)) in live.iter().zip(&desired) {
        if was_class != is_class {
            return ClaimChange::Refused(
                status::reason::STORAGE_CLASS_CHANGE_REFUSED,
                format!(
                    "volume claim {name} cannot move from StorageClass {} to {}; set redis.storageClassName back",
                    was_class.as_deref().unwrap_or("(default)"),
                    is_class.as_deref().unwrap_or("(default)")
                ),
            );
        }
        match (crate::quantity::nanos(was), crate::quantity::nanos(is)) {
            (Some(w), Some(i)) if i < w => {
                return ClaimChange::Refused(
                    status::reason::STORAGE_SHRINK_REFUSED,
                    format!(
                        "volume claim {name} cannot shrink from {was} to {is}; set redis.storage back to at least {was}"
                    ),
                )
            }
            (Some(w), Some(i)) if i > w => grow.push((name.clone(), is.clone())),
            (Some(_), Some(_)) => {}
            _ if was == is => {}
            _ => return ClaimChange::Replace,
        }
    }
    if grow.is_empty() {
        ClaimChange::Same
    } else {
        ClaimChange::Grow(grow)
    }
}

/// Why the StatefulSet's live claims must stay as they are, if they must:
/// a shrink or a class change (never possible), or an expansion the API
/// server refused before for this generation (not asked again on every
/// reconcile: no writes at steady state).
pub(super) fn claims_held(
    sp: &StreamPipeline,
    change: &ClaimChange,
) -> Option<(&'static str, String)> {
    match change {
        ClaimChange::Refused(reason, message) => Some((reason, message.clone())),
        ClaimChange::Grow(_) => degraded_for(
            sp.status.as_ref(),
            sp.metadata.generation,
            status::reason::STORAGE_RESIZE_REFUSED,
        )
        .map(|message| (status::reason::STORAGE_RESIZE_REFUSED, message)),
        ClaimChange::Same | ClaimChange::Replace => None,
    }
}

/// A volume claim template: name, storage request, StorageClass.
type Claim = (String, String, Option<String>);

/// `spec.volumeClaimTemplates` as (name, storage request, class).
fn claim_templates(v: &Value) -> Vec<Claim> {
    v.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                t.pointer("/spec/resources/requests/storage")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                t.pointer("/spec/storageClassName")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        })
        .collect()
}

/// Raises the storage request of the StatefulSet's claims (`<template>-<set>-<ordinal>`)
/// to `sizes`. `Ok(Err(why))` when the API server refuses (the StorageClass
/// does not allow expansion, or the claim is not bound to one that can).
///
/// # Errors
/// Other API failures.
pub(super) async fn expand_claims(
    target: &Target<'_>,
    set: &str,
    live: &Value,
    sizes: &[(String, String)],
) -> Result<Result<(), String>, Error> {
    let replicas = live
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let api: Api<PersistentVolumeClaim> = Api::namespaced(target.client.clone(), target.ns);
    for (template, size) in sizes {
        for ordinal in 0..replicas {
            let claim = format!("{template}-{set}-{ordinal}");
            let body = json!({"spec": {"resources": {"requests": {"storage": size}}}});
            match api
                .patch(&claim, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => info!(claim, size, "volume claim expanded"),
                // Not created yet: the new StatefulSet creates it at the new size.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                    return Ok(Err(format!(
                        "volume claim {claim} cannot be expanded to {size}: {}",
                        e.message
                    )));
                }
                Err(e) => return Err(api_error("patch", "PersistentVolumeClaim", &claim, e)),
            }
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_grow_are_refused_to_shrink_or_move_and_compare_by_value() {
        let set = |size: &str, class: Option<&str>| {
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"storageClassName": class, "resources": {"requests": {"storage": size}}}}]}})
        };
        assert_eq!(
            claim_change(&set("1Gi", None), &set("1024Mi", None)),
            ClaimChange::Same
        );
        assert_eq!(
            claim_change(&set("1Gi", None), &set("2Gi", None)),
            ClaimChange::Grow(vec![("data".into(), "2Gi".into())])
        );
        assert!(matches!(
            claim_change(&set("2Gi", None), &set("1Gi", None)),
            ClaimChange::Refused(status::reason::STORAGE_SHRINK_REFUSED, _)
        ));
        assert!(matches!(
            claim_change(&set("1Gi", Some("std")), &set("1Gi", Some("fast"))),
            ClaimChange::Refused(status::reason::STORAGE_CLASS_CHANGE_REFUSED, _)
        ));
        assert_eq!(
            claim_change(&set("1Gi", None), &json!({"spec": {}})),
            ClaimChange::Replace
        );
    }

    #[test]
    fn claim_templates_compare_name_and_size() {
        let a = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}]}});
        let b = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "2Gi"}}}}]}});
        assert_ne!(claim_templates(&a), claim_templates(&b));
        assert!(claim_templates(&json!({"spec": {}})).is_empty());
    }
}

//! What a reconcile reports: the readiness of the pipeline's workloads
//! from their live copies, the status and event of a spec that is not
//! applied, and the status write itself.

use super::*;

fn decode<K: serde::de::DeserializeOwned>(o: &DynamicObject) -> Result<K, Error> {
    serde_json::to_value(o)
        .and_then(serde_json::from_value)
        .map_err(|source| Error::Decode {
            kind: o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default(),
            name: o.name_any(),
            source,
        })
}

/// Readiness of the desired workloads from their live copies.
pub(super) fn readiness(
    sp: &StreamPipeline,
    objects: &[Child],
    live: &Live,
) -> Result<Vec<Readiness>, Error> {
    let mut out = Vec::new();
    for child in objects {
        let group = child
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::GROUP).cloned());
        let name = child.name().to_string();
        match child {
            Child::Deployment(d) => {
                let autoscaled = d.spec.as_ref().is_some_and(|s| s.replicas.is_none());
                out.push(match live.get(&("Deployment", name.clone())) {
                    Some(o) => {
                        Readiness::of_deployment(&decode::<Deployment>(o)?, group, autoscaled)
                    }
                    None => Readiness::missing(
                        format!("Deployment/{name}"),
                        group,
                        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                });
            }
            Child::StatefulSet(s) => {
                out.push(match live.get(&("StatefulSet", name.clone())) {
                    Some(o) => Readiness::of_stateful_set(&decode::<StatefulSet>(o)?, group),
                    None => Readiness::missing(
                        format!("StatefulSet/{name}"),
                        group,
                        s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    ),
                });
            }
            _ => {}
        }
    }
    debug!(pipeline = ?sp.metadata.name, workloads = out.len(), "readiness");
    Ok(out)
}

/// Readiness of whatever workloads run, for a pipeline whose spec is invalid.
fn live_readiness(spec: Option<&StreamPipelineSpec>, live: &Live) -> Result<Vec<Readiness>, Error> {
    let mut out = Vec::new();
    for ((kind, _), o) in live {
        let group = o.labels().get(labels::GROUP).cloned();
        match *kind {
            "Deployment" => {
                let autoscaled = group.as_deref().is_some_and(|g| {
                    spec.is_some_and(|s| {
                        s.groups
                            .iter()
                            .any(|x| x.name == g && x.autoscale.is_some())
                    })
                });
                out.push(Readiness::of_deployment(
                    &decode::<Deployment>(o)?,
                    group,
                    autoscaled,
                ));
            }
            "StatefulSet" => out.push(Readiness::of_stateful_set(
                &decode::<StatefulSet>(o)?,
                group,
            )),
            _ => {}
        }
    }
    Ok(out)
}

/// A pipeline whose spec is not applied: what reporting it needs.
pub(super) struct Refused<'a> {
    pub(super) object: &'a ObjectMeta,
    /// `None` when the spec could not even be read.
    pub(super) spec: Option<&'a StreamPipelineSpec>,
    pub(super) status: Option<&'a StreamPipelineStatus>,
}

impl<'a> Refused<'a> {
    pub(super) fn of(sp: &'a StreamPipeline) -> Self {
        Refused {
            object: &sp.metadata,
            spec: Some(&sp.spec),
            status: sp.status.as_ref(),
        }
    }
}

/// Status and event for a spec that is not applied: invalid, or naming
/// Secrets not open to pipelines (`validity` says which). Nothing else is
/// touched: a new pipeline gets no objects, a running one keeps the objects
/// it has.
pub(super) async fn report_not_applied(
    sp: &Refused<'_>,
    ctx: &Context,
    target: &Target<'_>,
    live: &Live,
    validity: Validity,
) -> Result<(), Error> {
    let Some((reason, why)) = validity.refusal().map(|(r, w)| (r, w.to_string())) else {
        return Ok(());
    };
    if reason == status::reason::INVALID_SPEC {
        ctx.metrics.invalid_specs.inc();
    }
    let workloads = live_readiness(sp.spec, live)?;
    let running = !live.is_empty();
    let generation = sp.object.generation;
    let reported = degraded_for(sp.status, generation, reason).is_some();
    if !reported {
        warn!(errors = %why, running, reason, "spec not applied");
        let note = match (running, reason == status::reason::INVALID_SPEC) {
            (true, true) => format!("not applied, the last valid spec keeps running: {why}"),
            (true, false) => {
                format!("not applied, the running objects are left as they are: {why}")
            }
            (false, _) => format!("nothing created: {why}"),
        };
        let about = PipelineObject {
            metadata: sp.object.clone(),
            spec: Err(String::new()),
            status: None,
        };
        ctx.event(&about, EventType::Warning, reason, "Validate", note)
            .await;
    }
    // Unread, the spec says nothing of suspension or exposure: the last
    // status's URL stands.
    let ingress_url = match sp.spec {
        Some(spec) => Some(ingress_url(target.name, target.ns, spec.expose.as_ref())),
        None => sp.status.and_then(|s| s.ingress_url.clone()),
    };
    let status = status::compute(&status::Inputs {
        generation,
        previous: sp.status,
        validity,
        suspended: sp.spec.is_some_and(|s| s.suspend == Some(true)),
        workloads,
        ingress_url,
        now: now(),
        decisions: BTreeMap::new(),
        degraded: None,
        // What runs keeps the pause Redis holds: the refused spec changes
        // nothing of it. Not known since this operator started: as last
        // reported.
        extra: paused_as_held(sp, ctx, target).into_iter().collect(),
    });
    write_status(sp.status, ctx, target, status).await
}

/// The `Paused` condition of a pipeline whose spec is not applied: from
/// the pause Redis holds, else the one last reported (none before).
fn paused_as_held(
    sp: &Refused<'_>,
    ctx: &Context,
    target: &Target<'_>,
) -> Option<crate::autoscale::ConditionParts> {
    let uid = sp.object.uid.as_deref().unwrap_or_default();
    let key = crate::redis_users::key(target.ns, target.name, uid);
    match ctx.redis_users.paused(&key) {
        Some(held) => Some(crate::pause::condition(held, Some(held), None)),
        None => {
            let c = status::condition(sp.status?, crate::pause::CONDITION)?;
            Some((
                c.type_.clone(),
                c.status == "True",
                c.reason.clone(),
                c.message.clone(),
            ))
        }
    }
}

/// Server-side applies `status` on `/status` unless it equals the current one.
pub(super) async fn write_status(
    previous: Option<&StreamPipelineStatus>,
    ctx: &Context,
    target: &Target<'_>,
    status: StreamPipelineStatus,
) -> Result<(), Error> {
    // `queues` is the observer's (`crate::observe`): not compared, not
    // applied, so this apply neither owns nor drops it.
    let unchanged = previous.is_some_and(|p| {
        StreamPipelineStatus {
            queues: None,
            ..p.clone()
        } == status
    });
    if unchanged {
        return Ok(());
    }
    // The answer is the whole object: read leniently, so a spec the types
    // cannot read does not turn a successful write into an error.
    let api: Api<PipelineObject> = Api::namespaced(ctx.client.clone(), target.ns);
    let body = json!({
        "apiVersion": StreamPipeline::api_version(&()),
        "kind": StreamPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        target.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| api_error("patch status of", "StreamPipeline", target.name, e))?;
    ctx.metrics.status_writes.inc();
    debug!("status written");
    Ok(())
}

//! The pipeline's objects in the cluster: listing what it owns (from the
//! watch caches, else the API), applying the desired objects with their
//! stamps and conflicts, and pruning what is no longer desired.

use super::*;

/// The pipeline whose objects a reconcile touches.
pub(super) struct Target<'a> {
    pub(super) client: &'a Client,
    pub(super) cache: Option<&'a OwnedCache>,
    pub(super) ns: &'a str,
    pub(super) name: &'a str,
    pub(super) uid: &'a str,
}

/// Live owned objects by `(kind, name)`.
pub(super) type Live = BTreeMap<(&'static str, String), DynamicObject>;

impl Target<'_> {
    pub(super) fn api(&self, k: &OwnedKind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), self.ns, &api_resource(k))
    }

    /// Every object of an owned kind that carries the pipeline's labels and
    /// is controlled by it (same uid: a deleted and recreated pipeline of
    /// the same name does not adopt its predecessor's leftovers). Read from
    /// the watch caches; a kind whose cache is not ready is listed.
    pub(super) async fn list_owned(&self) -> Result<Live, Error> {
        let lp = ListParams::default().labels(&labels::owned_selector(self.name));
        let mut live = Live::new();
        for k in owned_kinds() {
            let cached = self.cache.and_then(|c| c.objects(k, self.ns, self.name));
            let items = match cached {
                Some(items) => items,
                None => match self.api(k).list(&lp).await {
                    Ok(l) => l.items,
                    // The API is not installed (KEDA): there is nothing of it.
                    Err(kube::Error::Api(e)) if e.code == 404 && k.optional() => continue,
                    Err(e) => return Err(api_error("list", k.kind, self.name, e)),
                },
            };
            for mut o in items {
                let controlled = o
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.controller == Some(true) && r.uid == self.uid);
                if !controlled {
                    continue;
                }
                // List items may come without apiVersion and kind.
                o.types = Some(TypeMeta {
                    api_version: k.api_version.into(),
                    kind: k.kind.into(),
                });
                live.insert((k.kind, o.name_any()), o);
            }
        }
        Ok(live)
    }

    /// Whether `name` of kind `k` is free to create: absent, or ours (created
    /// a moment ago, not in the cache yet), or still being deleted, or
    /// someone else's and who controls it. Asked only before creating an object (at steady
    /// state every object is in the cache as the pipeline's own): an apply
    /// would take it over from its owner — another pipeline whose names
    /// overlap (`a` with group `b-c` and `a-b` with group `c` both name a
    /// Deployment `a-b-c`), or a user's object of that name.
    pub(super) async fn taken(&self, k: &OwnedKind, name: &str) -> Result<Taken, Error> {
        let found = match self.api(k).get_opt(name).await {
            Ok(found) => found,
            // The API is not installed (KEDA): nothing can be there.
            Err(kube::Error::Api(e)) if e.code == 404 && k.optional() => None,
            Err(e) => return Err(api_error("get", k.kind, name, e)),
        };
        let Some(o) = found else {
            return Ok(Taken::Free);
        };
        // A predecessor's child being collected, or an object this
        // pipeline replaces: free once it is gone.
        if o.metadata.deletion_timestamp.is_some() {
            return Ok(Taken::Pending);
        }
        let controller = o
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        Ok(match controller {
            Some(r) if r.uid == self.uid => Taken::Free,
            Some(r) => Taken::By(format!("controlled by {} {}", r.kind, r.name)),
            None => Taken::By("not made by sluice-operator".to_string()),
        })
    }

    /// Deletes `name` of kind `k` (in the background: dependents follow),
    /// only if it is still the object with `uid`: a copy read a moment ago
    /// never deletes a successor of the same name. Returns false when it
    /// was already gone.
    pub(super) async fn delete(
        &self,
        k: &OwnedKind,
        name: &str,
        uid: Option<&str>,
    ) -> Result<bool, Error> {
        self.delete_with(k, name, uid, DeleteParams::background())
            .await
    }

    /// Like [`Self::delete`], but the object's dependents (a StatefulSet's
    /// pods) are orphaned, not deleted: a successor with the same selector
    /// adopts them.
    pub(super) async fn delete_orphaning(
        &self,
        k: &OwnedKind,
        name: &str,
        uid: Option<&str>,
    ) -> Result<bool, Error> {
        self.delete_with(k, name, uid, DeleteParams::orphan()).await
    }

    pub(super) async fn delete_with(
        &self,
        k: &OwnedKind,
        name: &str,
        uid: Option<&str>,
        base: DeleteParams,
    ) -> Result<bool, Error> {
        let cache = self.cache.zip(uid);
        if let Some((cache, uid)) = cache {
            cache.deleting(uid);
        }
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..base
        };
        match self.api(k).delete(name, &params).await {
            Ok(_) => Ok(true),
            // Gone, or another object by now (the uid precondition).
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
            Err(e) => {
                if let Some((cache, uid)) = cache {
                    cache.not_deleted(uid);
                }
                Err(api_error("delete", k.kind, name, e))
            }
        }
    }
}

/// What applying the desired objects left to report in status.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// An optional API (KEDA) was missing, so its objects could not be
    /// applied (reported in status, not an error).
    pub(super) missing_apis: bool,
    /// Managed Redis's storage could not follow the spec: `(reason, message)`.
    pub(super) storage: Option<(&'static str, String)>,
    /// Objects the pipeline would write that exist and are not its own
    /// (another pipeline's, or made by hand): `Kind/name (whose)`.
    pub(super) conflicts: Vec<String>,
    /// An object is still being deleted (a StatefulSet orphaning its pods,
    /// a predecessor's child being collected): look again shortly.
    pub(super) pending: bool,
    /// Secrets the spec names that are absent or lack their key.
    pub(super) missing_secrets: Vec<String>,
}

impl Applied {
    /// What the `Conflict` condition and event say.
    pub(super) fn conflict_note(&self) -> String {
        format!(
            "not applied, the name is taken: {}",
            self.conflicts.join("; ")
        )
    }

    /// What makes the pipeline `Degraded` beyond an invalid spec.
    pub(super) fn degraded(&self) -> Option<(String, String)> {
        if !self.conflicts.is_empty() {
            return Some((status::reason::CONFLICT.to_string(), self.conflict_note()));
        }
        if !self.missing_secrets.is_empty() {
            return Some((
                status::reason::SECRET_MISSING.to_string(),
                self.missing_secrets.join("; "),
            ));
        }
        self.storage
            .as_ref()
            .map(|(reason, message)| ((*reason).to_string(), message.clone()))
    }
}

/// Server-side applies every desired object whose live copy differs, in
/// the desired order; `live` is updated with what the API server answered.
pub(super) async fn apply_objects(
    sp: &StreamPipeline,
    ctx: &Context,
    target: &Target<'_>,
    desired: &Desired,
    live: &mut Live,
) -> Result<Applied, Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut outcome = Applied::default();
    for child in &desired.objects {
        let kind = child.kind();
        let name = child.name().to_string();
        let mut stamped: Stamped = apply::stamp(child)?;
        let key = (kind.kind, name.clone());
        let current = live.get(&key).map(serde_json::to_value).transpose();
        let current = current.map_err(|source| Error::Decode {
            kind: kind.kind.into(),
            name: name.clone(),
            source,
        })?;
        // How a live StatefulSet's claim templates would change.
        let mut claims = match (child, &current) {
            (Child::StatefulSet(_), Some(cur)) => Some(claim_change(cur, &stamped.body)),
            _ => None,
        };
        if let (Some(change), Some(cur)) = (&claims, &current) {
            // Claims that cannot follow the spec stay as they are; the rest
            // of the StatefulSet (image, config, resources) still does.
            if let Some(refusal) = claims_held(sp, change) {
                outcome.storage = Some(refusal);
                claims = Some(ClaimChange::Same);
                let mut body = stamped.body;
                body["spec"]["volumeClaimTemplates"] = cur["spec"]["volumeClaimTemplates"].clone();
                if let Some(a) = body
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                {
                    a.remove(apply::APPLIED_HASH);
                }
                stamped = apply::stamp_value(body)?;
            }
        }
        if let Some(cur) = &current {
            if apply::up_to_date(&stamped, cur) {
                continue;
            }
        }
        let api = target.api(&kind);
        // An object on its way out takes no apply: the API server would
        // refuse a StatefulSet's new claim templates while it waits for its
        // pods to be orphaned. Its successor is created once it is gone.
        let terminating = |o: &Value| {
            o.pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null())
        };
        if current.as_ref().is_some_and(terminating) {
            outcome.pending = true;
            continue;
        }
        if current.is_none() {
            match target.taken(&kind, &name).await? {
                Taken::Free => {}
                Taken::Pending => {
                    outcome.pending = true;
                    continue;
                }
                Taken::By(whose) => {
                    outcome
                        .conflicts
                        .push(format!("{} {name} ({whose})", kind.kind));
                    continue;
                }
            }
        }
        let mut existed = current.is_some();
        if let (Some(change), Some(cur)) = (claims, &current) {
            let uid = cur.pointer("/metadata/uid").and_then(Value::as_str);
            match change {
                // A refused change was held above: the live claims are applied.
                ClaimChange::Same | ClaimChange::Refused(..) => {}
                ClaimChange::Grow(sizes) => {
                    if let Err(message) = expand_claims(target, &name, cur, &sizes).await? {
                        outcome.storage = Some((status::reason::STORAGE_RESIZE_REFUSED, message));
                        continue;
                    }
                    // The claims are larger now; the StatefulSet's templates
                    // cannot follow, so it is replaced — without its pods,
                    // which the new one adopts, and without its volumes.
                    if target.delete_orphaning(&kind, &name, uid).await? {
                        ctx.metrics.deleted(kind.kind);
                        let sizes: Vec<String> =
                            sizes.iter().map(|(n, s)| format!("{n} to {s}")).collect();
                        ctx.event(
                            sp,
                            EventType::Normal,
                            "Resized",
                            "Resize",
                            format!(
                                "StatefulSet {name}: volume claims expanded in place ({}); the StatefulSet is replaced, its pods and volumes kept",
                                sizes.join(", ")
                            ),
                        )
                        .await;
                    }
                    // The successor is created once the old one is gone.
                    live.remove(&key);
                    outcome.pending = true;
                    continue;
                }
                ClaimChange::Replace => {
                    if target.delete(&kind, &name, uid).await? {
                        ctx.metrics.deleted(kind.kind);
                        ctx.event(
                            sp,
                            EventType::Normal,
                            "Recreating",
                            "Delete",
                            format!("StatefulSet {name}: its volume claims were added or removed"),
                        )
                        .await;
                    }
                    existed = false;
                }
            }
        }
        let applied = match api.patch(&name, &pp, &Patch::Apply(&stamped.body)).await {
            Ok(a) => a,
            Err(kube::Error::Api(e)) if e.code == 404 && kind.optional() => {
                outcome.missing_apis = true;
                continue;
            }
            Err(e) => return Err(api_error("apply", kind.kind, &name, e)),
        };
        ctx.metrics.applied(kind.kind);
        let (reason, verb) = if existed {
            ("Updated", "Update")
        } else {
            ("Created", "Create")
        };
        info!(kind = kind.kind, object = %name, reason, "applied");
        ctx.event(
            sp,
            EventType::Normal,
            reason,
            verb,
            format!("{} {name}", kind.kind),
        )
        .await;
        let mut applied = applied;
        applied.types = Some(TypeMeta {
            api_version: kind.api_version.into(),
            kind: kind.kind.into(),
        });
        live.insert(key, applied);
    }
    Ok(outcome)
}

/// Deletes owned objects that are no longer desired (a removed group's
/// Deployment, managed Redis after switching to external, ...).
pub(super) async fn prune_objects(
    sp: &StreamPipeline,
    ctx: &Context,
    target: &Target<'_>,
    desired: &Desired,
    live: &mut Live,
) -> Result<(), Error> {
    let obsolete: Vec<_> = live
        .keys()
        .filter(|(kind, name)| !desired.contains(kind, name))
        .cloned()
        .collect();
    for key in obsolete {
        let (kind, name) = &key;
        let Some(k) = owned_kinds().iter().find(|k| k.kind == *kind) else {
            continue;
        };
        let uid = live.get(&key).and_then(|o| o.metadata.uid.clone());
        let deleted = target.delete(k, name, uid.as_deref()).await?;
        live.remove(&key);
        if !deleted {
            continue;
        }
        ctx.metrics.deleted(kind);
        info!(kind, object = %name, "deleted, no longer desired");
        ctx.event(
            sp,
            EventType::Normal,
            "Deleted",
            "Delete",
            format!("{kind} {name}: no longer desired"),
        )
        .await;
    }
    Ok(())
}

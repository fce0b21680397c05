//! What every object builder shares for one pipeline: the StreamPipeline as
//! owner (`Owner`: name, namespace and the controller owner reference every
//! object carries) and the `Ctx` of one rendering (spec, settings, config
//! hash, which Redis, which key ring Secret).

use std::ops::Deref;

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sluice_crds::{StreamPipeline, StreamPipelineSpec};

use super::error::{Error, Result};
use super::redis_use::RedisUse;
use crate::labels::{self, Component};
use crate::settings::OperatorSettings;

/// The StreamPipeline as owner of the objects: its name, namespace and the
/// controller owner reference every object carries.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) name: String,
    pub(crate) namespace: String,
    reference: OwnerReference,
}

/// # Errors
/// [`Error::MissingObjectKey`] without name, namespace or uid.
pub(crate) fn owner_of(sp: &StreamPipeline) -> Result<Owner> {
    let name = sp
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let namespace = sp
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    // controller_owner_ref is None exactly when name or uid is missing.
    let reference = sp
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    Ok(Owner {
        name,
        namespace,
        reference,
    })
}

impl Owner {
    /// Metadata of an owned object: name, namespace, labels, owner reference.
    pub(crate) fn meta(
        &self,
        name: String,
        component: Component,
        group: Option<&str>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels::labels(&self.name, component, group)),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }
}

/// Everything the object builders share for one pipeline.
pub(crate) struct Ctx<'a> {
    pub(crate) owner: Owner,
    pub(crate) spec: &'a StreamPipelineSpec,
    pub(crate) settings: &'a OperatorSettings,
    pub(crate) config_hash: String,
    pub(crate) redis: RedisUse<'a>,
    /// The Secret mounted at `/etc/sluice/keys`.
    pub(crate) key_secret: String,
    /// Whether each group's pods mount their own derived keys
    /// ([`crate::names::role_keys`]) instead of [`Self::key_secret`].
    pub(crate) role_keys: bool,
}

impl Deref for Ctx<'_> {
    type Target = Owner;
    fn deref(&self) -> &Owner {
        &self.owner
    }
}

impl Ctx<'_> {
    pub(crate) fn pull_secrets(&self) -> Option<Vec<LocalObjectReference>> {
        let s = &self.settings.images.pull_secrets;
        (!s.is_empty()).then(|| {
            s.iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        })
    }
}

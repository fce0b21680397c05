//! Golden snapshots of the objects the operator creates for every example.
//!
//! Each `examples/<name>.yaml`, and each `tests/pipelines/<name>.yaml` (not
//! examples: pipelines that make the renderer produce what the examples
//! leave out — sidecars, node Secrets, autoscaling, exposure, external
//! Redis), is parsed into a StreamPipeline, given namespace `demo` and a
//! fixed uid, and rendered by
//! `sluice_operator::desired` with fixed settings (images tagged `golden`,
//! so a version bump does not touch the snapshots). The YAML of the applied
//! objects, followed by the two create-if-absent Secrets built from fixed
//! stand-in material, must equal `tests/golden/<name>.yaml`.
//!
//! `scripts/check-deploy` runs checkov over the applied objects of every
//! snapshot (the part above the Secrets).
//!
//! After an intended change, rewrite the snapshots and review the diff:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test -p sluice-operator --test golden
//! git diff operator/tests/golden/
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use sluice_crds::StreamPipeline;
use sluice_operator::redis_tls::TlsMaterial;
use sluice_operator::render::key_ring::role_keys_secret;
use sluice_operator::render::redis_use::managed_tls;
use sluice_operator::{
    desired, initial_key_secret, redis_secret, resources, secrets, GeneratedSecret,
    OperatorSettings, RuntimeImages,
};

const UID: &str = "00000000-0000-4000-8000-000000000001";
const NAMESPACE: &str = "demo";
/// base64 of 32 zero bytes: a stand-in for the random key.
const KEY_B64: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
/// A stand-in for the random Redis password.
const REDIS_PASSWORD: &str = "golden-stand-in-password";

fn settings() -> OperatorSettings {
    OperatorSettings {
        images: RuntimeImages {
            ingress: "ghcr.io/sluice-dev/sluice-web-ingress:golden".into(),
            worker: "ghcr.io/sluice-dev/sluice-exec-worker:golden".into(),
            redis: "redis:7.4-alpine".into(),
            pull_policy: None,
            pull_secrets: vec![],
        },
        ..OperatorSettings::default()
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines")
}

/// The `*.yaml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn render(example: &Path) -> String {
    let text = std::fs::read_to_string(example).unwrap();
    // Named from the workspace root in the header: examples/… or operator/tests/pipelines/….
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let source = example.canonicalize().unwrap();
    let source = source.strip_prefix(&root).unwrap_or(&source);
    let mut sp: StreamPipeline =
        sluice_crds::yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    sp.metadata.namespace = Some(NAMESPACE.into());
    sp.metadata.uid = Some(UID.into());
    let d = desired(&sp, &settings()).unwrap_or_else(|e| panic!("{}: {e}", example.display()));

    let mut out = format!(
        "# Golden snapshot of the objects sluice-operator applies for {}\n\
         # (namespace {NAMESPACE}); regenerate with UPDATE_GOLDEN=1, see tests/golden.rs.\n\
         # config hash: {}\n",
        source.display(),
        d.config_hash
    );
    out.push_str(&d.to_yaml().unwrap());
    let updated =
        sluice_operator::clock::time_of(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap());
    let mut secrets = Vec::new();
    let mut ring = BTreeMap::new();
    for s in &d.generated_secrets {
        secrets.push(match s {
            GeneratedSecret::KeyRing(_) => {
                let s = initial_key_secret(&sp, "k0", KEY_B64, &updated).unwrap();
                ring = secrets::text_data(&s);
                s
            }
            GeneratedSecret::RoleKeys { name, needs } => {
                role_keys_secret(&sp, name, &ring, needs).unwrap()
            }
            GeneratedSecret::RedisPassword(_) => {
                let tls = managed_tls(&sp.spec).then(|| {
                    TlsMaterial::placeholder(Utc.with_ymd_and_hms(2025, 1, 21, 0, 0, 0).unwrap())
                });
                redis_secret(
                    &sp,
                    |r| format!("{REDIS_PASSWORD}-{}", r.user()),
                    tls.as_ref(),
                )
                .unwrap()
            }
        });
    }
    out.push_str(
        "# Created only if absent (never applied); random material replaced by stand-ins.\n",
    );
    for s in &secrets {
        out.push_str(&format!(
            "# {} data, decoded:\n",
            s.metadata.name.as_deref().unwrap_or_default()
        ));
        for (k, v) in s.data.iter().flatten() {
            out.push_str(&format!("#   {k}:\n"));
            for line in String::from_utf8_lossy(&v.0).lines() {
                out.push_str(&format!("#     {line}\n"));
            }
        }
        out.push_str(&resources::to_yaml(std::slice::from_ref(s)).unwrap());
    }
    if !d.obsolete_secrets.is_empty() {
        out.push_str(&format!(
            "# Deleted by name if owned: {}\n",
            d.obsolete_secrets.join(", ")
        ));
    }
    out
}

#[test]
fn every_example_renders_as_its_golden_snapshot() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut examples = yaml_files(&examples_dir());
    assert!(!examples.is_empty(), "no examples found");
    let pipelines = yaml_files(&pipelines_dir());
    // One snapshot per file name: a test pipeline may not shadow an example.
    for p in &pipelines {
        assert!(
            !examples.iter().any(|e| e.file_name() == p.file_name()),
            "{} has the name of an example",
            p.display()
        );
    }
    examples.extend(pipelines);

    let mut mismatched = Vec::new();
    for example in &examples {
        let golden = golden_dir().join(example.file_name().unwrap());
        let rendered = render(example);
        if update {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&golden, &rendered).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == rendered => {}
            Ok(expected) => {
                let line = expected
                    .lines()
                    .zip(rendered.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(expected.lines().count().min(rendered.lines().count()));
                mismatched.push(format!(
                    "{}: differs from line {}",
                    golden.display(),
                    line + 1
                ));
            }
            Err(e) => mismatched.push(format!("{}: {e}", golden.display())),
        }
    }

    // A snapshot whose example is gone would go stale unnoticed.
    let stale: Vec<_> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|g| !examples.iter().any(|e| e.file_name() == g.file_name()))
        .collect();
    if update {
        for g in stale {
            std::fs::remove_file(g).unwrap();
        }
        return;
    }
    assert!(stale.is_empty(), "snapshots without an example: {stale:?}");
    assert!(
        mismatched.is_empty(),
        "golden snapshots differ (rerun with UPDATE_GOLDEN=1 and review the diff):\n{}",
        mismatched.join("\n")
    );
}

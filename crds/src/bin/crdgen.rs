//! Writes the StreamPipeline CRD YAML to stdout, or to the file given.
//!
//! `cargo run -p sluice-crds --bin crdgen > crds/streampipeline.yaml`

fn main() -> std::io::Result<()> {
    let yaml = sluice_crds::crd::crd_yaml();
    match std::env::args().nth(1) {
        Some(path) if path != "-" => std::fs::write(path, yaml),
        _ => {
            use std::io::Write;
            std::io::stdout().write_all(yaml.as_bytes())
        }
    }
}

//! Writes a CRD's YAML to stdout, or to the file given: the StreamPipeline
//! CRD, or with `--dead-letter-action` first the DeadLetterAction CRD.
//!
//! `cargo run -p sluice-crds --bin crdgen crds/streampipeline.yaml`
//! `cargo run -p sluice-crds --bin crdgen -- --dead-letter-action crds/deadletteraction.yaml`

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let yaml = if args.first().map(String::as_str) == Some("--dead-letter-action") {
        args.remove(0);
        sluice_crds::crd::dead_letter_action_crd_yaml()
    } else {
        sluice_crds::crd::crd_yaml()
    };
    match args.first() {
        Some(path) if path != "-" => std::fs::write(path, yaml),
        _ => {
            use std::io::Write;
            std::io::stdout().write_all(yaml.as_bytes())
        }
    }
}

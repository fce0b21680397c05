//! Manifest bytes → UTF-8 → bounded YAML → shape → rules → plan.
//!
//! Whatever the bytes, `parse_manifest_bytes` answers with a plan or an
//! error, never a panic, hang or unbounded allocation. A manifest it accepts
//! must also survive the trip the operator makes it take: written back as
//! YAML (the `P-pipeline` ConfigMap) and read again, it gives the same plan.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((sp, plan)) = sluice_crds::parse_manifest_bytes("fuzz.yaml", data) else {
        return;
    };
    let text = sluice_crds::yaml::to_string(&sp).expect("an accepted manifest serialises");
    let (_, again) = sluice_crds::parse_manifest("round-trip.yaml", &text)
        .unwrap_or_else(|e| panic!("an accepted manifest reads back: {e}\n{text}"));
    assert_eq!(plan, again, "the plan survives a round trip\n{text}");
});

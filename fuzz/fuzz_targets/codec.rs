//! Message bytes `m` of a version-3 entry → `sluice_platform::codec::decode`.
//!
//! The MAC is checked before anything is decoded, but a holder of a key (a
//! compromised pod) can sign any bytes: the decoder answers with an
//! envelope or an error, never a panic or an allocation beyond its input,
//! and what it decodes encodes to bytes that decode to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_platform::codec;

fuzz_target!(|m: &[u8]| {
    if let Ok(env) = codec::decode_binary(m) {
        let mut again = Vec::new();
        codec::encode_binary(&env, &mut again);
        assert_eq!(codec::decode_binary(&again).as_ref(), Ok(&env));
    }
});

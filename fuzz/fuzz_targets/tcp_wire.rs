//! Bytes a tcp-profile peer sends once a frame's MAC passed → the calls a
//! worker sends the hub and the answers the hub sends back.
//!
//! The first byte picks the decoder (even: a call, odd: an answer). Either
//! decodes to one message or to an error, never a panic, and never
//! allocates beyond what the bytes can fill; a message that decodes encodes
//! back to the same bytes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_platform::tcp::wire::{Answer, Call};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick % 2 == 0 {
        if let Ok((id, call)) = Call::decode(rest) {
            let again = call.encode(id);
            assert_eq!(again, rest, "a call re-encodes to its bytes");
            assert_eq!(Call::decode(&again), Ok((id, call)));
        }
    } else if let Ok((id, answer)) = Answer::decode(rest) {
        let again = answer.encode(id);
        assert_eq!(again, rest, "an answer re-encodes to its bytes");
        assert_eq!(Answer::decode(&again), Ok((id, answer)));
    }
});

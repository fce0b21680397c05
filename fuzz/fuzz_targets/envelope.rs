//! Stream entry bytes → the verification chain (size → version → key id →
//! key → MAC → decode → freshness → kind/destination → replay guard)
//! against a fixed key ring.
//!
//! The first byte picks what the rest is:
//! - even: the raw fields `v`, `k`, `s`, `m` and the dead-letter note `n`,
//!   separated by `0xFF` (what anyone who can write to Redis can store),
//!   also read as a dead letter;
//! - odd: an envelope, as JSON, which is signed with the ring's key for its
//!   kind (requests with their destination's request key, replies as group
//!   `work`) in the binary form (version 3) when the first byte's second bit
//!   is set, else as JSON (version 2), before it is verified, so the checks after the MAC see
//!   arbitrary field values (what a holder of a key, or a faulty signer,
//!   can send); an envelope the ring has no key for is signed with
//!   nothing and skipped.
//!
//! Either way verification answers with an envelope or a rejection, never a
//! panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sluice_platform::memory::MemoryKv;
use sluice_platform::metrics::Rejections;
use sluice_platform::{
    Envelope, Format, KeyRing, Keys, SharedKeyRing, Signer, StreamEntry, Verifier,
};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    signer: Signer,
    verifier: Verifier,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let raw = [("k1".to_string(), vec![7u8; 32])].into_iter().collect();
        let ring = SharedKeyRing::fixed(KeyRing::from_raw("k1", &raw).expect("fixed ring"));
        let keys = Keys::new("ns", "p");
        let verifier = Verifier::new(
            ring.clone(),
            Some(MemoryKv::new()),
            keys.clone(),
            Duration::from_secs(30),
            1 << 20,
            Rejections::default(),
        );
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            signer: Signer::new(ring, &keys, "work"),
            verifier,
        }
    })
}

fn verify(f: &Fixture, entry: &StreamEntry) {
    f.runtime.block_on(async {
        let at = sluice_platform::At {
            stream: "sluice:{default/fuzz}:q:work",
            id: "1-0",
            deliveries: 1,
        };
        let _ = f.verifier.verify_request(entry, &at, "work").await;
        let _ = f.verifier.verify_reply(entry, "ingress-1").await;
    });
    let _ = f.verifier.verify_dead_letter(entry, &["web", "work"]);
    let _ = sluice_platform::DeadLetterNote::decode(&entry.note);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    if mode % 2 == 0 {
        let mut fields = rest.splitn(5, |b| *b == 0xFF);
        let mut next = || fields.next().unwrap_or_default();
        let (v, k, s, m, note) = (next(), next(), next(), next(), next());
        verify(f, &StreamEntry::copied([v, k, m, s, note]));
    } else if let Ok(env) = serde_json::from_slice::<Envelope>(rest) {
        let format = if mode & 2 == 0 {
            Format::Json
        } else {
            Format::Binary
        };
        if let Ok(entry) = f.signer.clone().with_format(format).sign_as_is(&env) {
            verify(f, &entry);
        }
    }
});

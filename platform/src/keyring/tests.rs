//! The key ring's tests: names, derivation, the cache, both layouts on
//! disk and reloads.

use super::*;

const PIPE: &str = "ns/p";

fn ring(kids: &[(&str, u8)], current: &str) -> KeyRing {
    let raw = kids
        .iter()
        .map(|(k, b)| (k.to_string(), vec![*b; KEY_LEN]))
        .collect();
    KeyRing::from_raw(current, &raw).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn files(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect()
}

#[test]
fn debug_output_names_kids_and_never_key_bytes() {
    let ring = KeyRing::ephemeral();
    let s = format!("{ring:?}");
    assert!(s.contains(ring.current()));
    let key = *ring
        .key(ring.current(), Kind::Request, PIPE, "cpu")
        .unwrap();
    assert!(!s.contains(&hex(&key)));
    let derived =
        KeyRing::from_files(&derived_files(&ring, PIPE, &[(Kind::Request, "cpu")]).unwrap())
            .unwrap();
    let s = format!("{derived:?}");
    assert!(s.contains(".request.cpu"), "{s}");
    assert!(!s.contains(&hex(&key)) && !s.contains(&b64(&key)), "{s}");
}

#[test]
fn derived_keys_differ_by_kind_group_and_pipeline() {
    let r = ring(&[("k1", 1)], "k1");
    let k = |kind, pipe, group| *r.key("k1", kind, pipe, group).unwrap();
    let all = [
        k(Kind::Request, PIPE, "cpu"),
        k(Kind::Reply, PIPE, "cpu"),
        k(Kind::Request, PIPE, "io"),
        k(Kind::Reply, PIPE, "io"),
        k(Kind::Request, "ns/q", "cpu"),
        k(Kind::Request, "nt/p", "cpu"),
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // The documented derivation, independently restated.
    let hk = Hkdf::<Sha256>::new(Some(b"sluice-ipc-v1"), &[1u8; 32]);
    let mut want = [0u8; 32];
    hk.expand(b"sluice/reply/ns/p/io", &mut want).unwrap();
    assert_eq!(k(Kind::Reply, PIPE, "io"), want);
}

#[test]
fn hex_is_lowercase_two_digits_per_byte() {
    assert_eq!(hex(&[]), "");
    assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    let all: Vec<u8> = (0..=255).collect();
    let want: String = all.iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(hex(&all), want);
}

/// Both layouts: the prepared state makes the MAC the key's bytes
/// make, each time it is taken.
#[test]
fn a_prepared_mac_key_makes_the_macs_its_key_makes() {
    use hmac::{KeyInit, Mac};
    let raw = ring(&[("k1", 1)], "k1");
    let derived =
        KeyRing::from_files(&derived_files(&raw, PIPE, &[(Kind::Request, "cpu")]).unwrap())
            .unwrap();
    for r in [raw, derived] {
        let key = *r.key("k1", Kind::Request, PIPE, "cpu").unwrap();
        for message in [&b"3"[..], b"another message"] {
            let mut fresh = MacKey::new_from_slice(&key).unwrap();
            fresh.update(message);
            let mut prepared = r.mac_key("k1", Kind::Request, PIPE, "cpu").unwrap();
            prepared.update(message);
            assert_eq!(
                prepared.finalize().into_bytes(),
                fresh.finalize().into_bytes(),
                "{}",
                r.layout_name()
            );
        }
        // A derived directory holds only the keys it was given.
        assert_eq!(
            r.mac_key("k1", Kind::Reply, PIPE, "cpu").is_some(),
            r.layout_name() == "ring"
        );
    }
}

#[test]
fn derived_keys_are_remembered_up_to_a_bound_and_equal_fresh_ones() {
    let r = ring(&[("k1", 1), ("k2", 2)], "k1");
    let raw = [1u8; 32];
    for (kid, kind, group) in [
        ("k1", Kind::Request, "cpu"),
        ("k1", Kind::Reply, "cpu"),
        ("k2", Kind::Request, "cpu"),
    ] {
        let first = *r.key(kid, kind, PIPE, group).unwrap();
        assert!(r.mac_key(kid, kind, PIPE, group).is_some());
        assert_eq!(
            r.key(kid, kind, PIPE, group).as_deref(),
            Some(&first),
            "remembered"
        );
        if kid == "k1" {
            assert_eq!(first, derive(&raw, kind, PIPE, group));
        }
    }
    assert_eq!(r.derived.len.load(Ordering::Relaxed), 3);
    // Keys kept for endless groups fill it only to the bound; keys
    // past it are still derived, and right.
    let clone = r.clone();
    for i in 0..DERIVED_CACHE_MAX + 50 {
        let g = format!("g{i}");
        assert!(clone.mac_key("k1", Kind::Reply, PIPE, &g).is_some());
        assert_eq!(
            clone.key("k1", Kind::Reply, PIPE, &g).as_deref(),
            Some(&derive(&raw, Kind::Reply, PIPE, &g))
        );
    }
    assert_eq!(r.derived.len.load(Ordering::Relaxed), DERIVED_CACHE_MAX);
}

/// Key ids of hostile entries may name any group: a key made to check
/// one is kept only once a MAC verified under it.
#[test]
fn keys_made_for_a_check_are_kept_only_once_a_mac_verified() {
    let r = ring(&[("k1", 1)], "k1");
    let len = || r.derived.len.load(Ordering::Relaxed);
    for i in 0..DERIVED_CACHE_MAX + 50 {
        let g = format!("made-up-{i}");
        let check = r.check_key("k1", Kind::Reply, PIPE, &g).unwrap();
        assert!(check.unseen.is_some());
        assert!(r.key("k1", Kind::Reply, PIPE, &g).is_some());
    }
    assert_eq!(len(), 0, "nothing kept for checks that failed");
    let check = r.check_key("k1", Kind::Reply, PIPE, "cpu").unwrap();
    r.remember(check.unseen);
    assert_eq!(len(), 1);
    let again = r.check_key("k1", Kind::Reply, PIPE, "cpu").unwrap();
    assert!(again.unseen.is_none(), "from the cache");
}

#[test]
fn names_that_could_blur_a_label_derive_nothing() {
    let r = ring(&[("k1", 1)], "k1");
    for group in ["", "a/b", "a.b", "-a", "A", &"a".repeat(64)] {
        assert!(
            r.key("k1", Kind::Request, PIPE, group).is_none(),
            "{group:?}"
        );
    }
    for pipe in ["ns", "ns/p/q", "/p", "ns/", "NS/p"] {
        assert!(r.key("k1", Kind::Request, pipe, "cpu").is_none(), "{pipe}");
    }
}

#[test]
fn derived_files_are_deterministic_and_name_every_kid() {
    let r = ring(&[("k1", 1), ("k2", 2)], "k2");
    let needs = [(Kind::Request, "cpu"), (Kind::Reply, "io")];
    let a = derived_files(&r, PIPE, &needs).unwrap();
    assert_eq!(a, derived_files(&r, PIPE, &needs).unwrap());
    let names: Vec<&str> = a.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "current",
            "k1.reply.io",
            "k1.request.cpu",
            "k2.reply.io",
            "k2.request.cpu"
        ]
    );
    assert_eq!(a["current"].as_str(), "k2");
    assert_ne!(a["k1.request.cpu"], a["k2.request.cpu"]);
}

#[test]
fn a_derived_ring_holds_exactly_its_keys() {
    let r = ring(&[("k1", 1)], "k1");
    let d =
        KeyRing::from_files(&derived_files(&r, PIPE, &[(Kind::Request, "cpu")]).unwrap()).unwrap();
    assert_eq!(d.layout_name(), "derived");
    assert_eq!(
        d.key("k1", Kind::Request, PIPE, "cpu"),
        r.key("k1", Kind::Request, PIPE, "cpu")
    );
    assert!(d.holds(Kind::Request, PIPE, "cpu"));
    assert!(!d.holds(Kind::Reply, PIPE, "cpu"));
    assert!(!d.holds(Kind::Request, PIPE, "io"));
    // Rendering again from the derived ring gives what it holds, and
    // refuses what it does not.
    assert!(derived_files(&d, PIPE, &[(Kind::Request, "cpu")]).is_ok());
    assert!(matches!(
        derived_files(&d, PIPE, &[(Kind::Reply, "cpu")]),
        Err(KeyRingError::Missing { .. })
    ));
}

#[test]
fn derived_files_refuse_bad_names_and_empty_needs() {
    let r = ring(&[("k1", 1)], "k1");
    assert!(matches!(
        derived_files(&r, "no-slash", &[(Kind::Request, "cpu")]),
        Err(KeyRingError::BadPipeline(_))
    ));
    assert!(matches!(
        derived_files(&r, PIPE, &[(Kind::Request, "a.b")]),
        Err(KeyRingError::BadName { .. })
    ));
    assert!(matches!(
        derived_files(&r, PIPE, &[]),
        Err(KeyRingError::NothingNeeded)
    ));
}

#[test]
fn malformed_names_and_mixed_layouts_are_refused() {
    let key = b64(&[1u8; 32]);
    for name in [
        "k1.request",
        "k1.request.cpu.extra",
        "k1.sign.cpu",
        "k1.request.CPU",
        "k1.request.-cpu",
        "k!.request.cpu",
        "k1..cpu",
        &format!("k1.reply.{}", "a".repeat(64)),
        &"k".repeat(65),
    ] {
        let e = KeyRing::from_files(&files(&[("current", "k1"), (name, &key)]));
        assert!(
            matches!(e, Err(KeyRingError::BadName { .. })),
            "{name}: {e:?}"
        );
    }
    let e = KeyRing::from_files(&files(&[
        ("current", "k1"),
        ("k1", &key),
        ("k1.request.cpu", &key),
    ]))
    .unwrap_err();
    assert!(matches!(e, KeyRingError::Mixed), "{e}");
    assert!(e.to_string().contains("one layout"), "{e}");
    // `current` must name a kid holding keys, in either layout.
    assert!(matches!(
        KeyRing::from_files(&files(&[("current", "k2"), ("k1.request.cpu", &key)])),
        Err(KeyRingError::CurrentUnknown(_))
    ));
    assert!(matches!(
        KeyRing::from_files(&files(&[("current", "k1")])),
        Err(KeyRingError::CurrentUnknown(_))
    ));
    assert!(matches!(
        KeyRing::from_files(&files(&[("current", "../k1"), ("k1", &key)])),
        Err(KeyRingError::BadKey { .. })
    ));
    let e = KeyRing::from_files(&files(&[("current", "k1"), ("k1.reply.io", "c2hvcnQ=")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 32 bytes"), "{e}");
}

#[test]
fn write_new_then_load_round_trips_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let kid = write_new(dir.path()).unwrap();
    let ring = KeyRing::load(dir.path()).unwrap();
    assert_eq!(ring.current(), kid);
    assert_eq!(ring.layout_name(), "ring");
    assert!(write_new(dir.path()).is_err());
}

#[test]
fn a_derived_directory_loads_with_dotfiles_and_symlinks_like_a_mounted_secret() {
    // The kubelet's layout: the files live in a timestamped directory,
    // `..data` points at it, and each name is a link through `..data`.
    let dir = tempfile::tempdir().unwrap();
    let r = ring(&[("k1", 1)], "k1");
    let rendered = derived_files(&r, PIPE, &[(Kind::Reply, "io")]).unwrap();
    let stamp = dir.path().join("..2026_01_01_00_00_00.1");
    std::fs::create_dir(&stamp).unwrap();
    for (name, content) in &rendered {
        std::fs::write(stamp.join(name), content).unwrap();
    }
    std::os::unix::fs::symlink(&stamp, dir.path().join("..data")).unwrap();
    for name in rendered.keys() {
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.path().join(name)).unwrap();
    }
    let loaded = KeyRing::load(dir.path()).unwrap();
    assert_eq!(loaded.layout_name(), "derived");
    assert_eq!(
        loaded.key("k1", Kind::Reply, PIPE, "io"),
        r.key("k1", Kind::Reply, PIPE, "io")
    );
}

#[test]
fn oversized_files_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("current"), "k1").unwrap();
    std::fs::write(dir.path().join("k1"), "A".repeat(10_000)).unwrap();
    let e = KeyRing::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");
    std::fs::write(dir.path().join("k1"), [0xff, 0xfe, b'A']).unwrap();
    let e = KeyRing::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("`k1`") && e.contains("file is not text"), "{e}");
}

#[test]
fn bad_directories_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        KeyRing::load(dir.path()),
        Err(KeyRingError::NoCurrent(_))
    ));
    std::fs::write(dir.path().join("current"), "k1").unwrap();
    assert!(matches!(
        KeyRing::load(dir.path()),
        Err(KeyRingError::CurrentUnknown(_))
    ));
    std::fs::write(dir.path().join("k1"), "not base64!").unwrap();
    let e = KeyRing::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not base64"), "{e}");
    std::fs::write(dir.path().join("k1"), "c2hvcnQ=").unwrap();
    let e = KeyRing::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("expected 32 bytes"), "{e}");
}

#[test]
fn a_reload_sees_a_switch_between_layouts_and_keeps_the_last_good_ring() {
    let dir = tempfile::tempdir().unwrap();
    let r = ring(&[("k1", 1)], "k1");
    std::fs::write(dir.path().join("current"), "k1").unwrap();
    std::fs::write(dir.path().join("k1"), b64(&[1u8; 32])).unwrap();
    let shared = SharedKeyRing::from_dir(dir.path()).unwrap();
    assert!(!shared.reload().unwrap(), "nothing changed");
    std::fs::remove_file(dir.path().join("k1")).unwrap();
    for (name, content) in derived_files(&r, PIPE, &[(Kind::Request, "cpu")]).unwrap() {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    assert!(shared.reload().unwrap(), "the layout changed");
    assert_eq!(shared.get().layout_name(), "derived");
    // Half-written: a raw key appears beside the derived ones.
    std::fs::write(dir.path().join("k2"), b64(&[2u8; 32])).unwrap();
    assert!(matches!(shared.reload(), Err(KeyRingError::Mixed)));
    assert_eq!(
        shared.get().layout_name(),
        "derived",
        "the last good ring stays"
    );
}

#[test]
fn key_text_is_held_in_buffers_that_never_grew() {
    // A buffer that grows leaves its old copy behind, unwiped: each file
    // is read into one of its size (plus the byte that finds the end).
    let dir = tempfile::tempdir().unwrap();
    write_new(dir.path()).unwrap();
    let read = directory::read_dir(dir.path()).unwrap();
    assert_eq!(read.len(), 2);
    for (name, text) in &read {
        assert_eq!(
            text.capacity(),
            text.len() + 1,
            "{name} was read in one buffer"
        );
    }
    // The handover to a tcp worker: written into a buffer of its final
    // size (one byte spare), and read back as the same ring.
    let r = ring(&[("k1", 1), ("k2", 2)], "k2");
    let files = derived_files(&r, PIPE, &[(Kind::Request, "cpu"), (Kind::Reply, "io")]).unwrap();
    let json = files_json(&files);
    assert_eq!(
        json.capacity(),
        json.len() + 1,
        "the JSON never grew its buffer"
    );
    let back: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.len(), files.len());
    let back = KeyRing::from_files(&back).unwrap();
    assert_eq!(back.current(), "k2");
    assert_eq!(
        back.key("k1", Kind::Request, PIPE, "cpu"),
        r.key("k1", Kind::Request, PIPE, "cpu")
    );
}

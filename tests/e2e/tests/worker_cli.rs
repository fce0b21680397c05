//! `sluice-exec-worker`'s command line: `--help` documents every flag with
//! its variable, and settings it cannot run with stop it at start-up with
//! one clear line naming the flag — never a panic.

use std::process::{Command, Output};

use sluice_e2e::{binary, example, Sandbox, WORKER_BIN};

fn worker(args: &[&str]) -> Output {
    let mut cmd = Command::new(binary(WORKER_BIN));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run sluice-exec-worker")
}

#[test]
fn help_documents_every_flag_with_its_variable() {
    let out = worker(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, var) in [
        ("--pipeline", "SLUICE_PIPELINE"),
        ("--backend", "SLUICE_BACKEND"),
        ("--group", "SLUICE_GROUP"),
        ("--redis", "SLUICE_REDIS_URL"),
        ("--redis-timeout", "SLUICE_REDIS_TIMEOUT"),
        ("--redis-pool-size", "SLUICE_REDIS_POOL_SIZE"),
        ("--redis-ca-file", "SLUICE_REDIS_CA_FILE"),
        ("--keys", "SLUICE_KEYS_DIR"),
        ("--hub", "SLUICE_HUB"),
        ("--keys-stdin", "standard input"),
        ("--admin", "SLUICE_ADMIN"),
        ("--concurrency", "SLUICE_CONCURRENCY"),
        ("--threads", "SLUICE_THREADS"),
        ("--secrets-dir", "SLUICE_SECRETS_DIR"),
        ("--drain-timeout", "SLUICE_DRAIN_TIMEOUT"),
        ("--log-format", "SLUICE_LOG_FORMAT"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        assert!(help.contains(var), "{var} missing from --help:\n{help}");
    }
}

#[test]
fn a_memory_pipeline_or_a_bad_backend_is_refused_at_start_up() {
    let sb = Sandbox::new("worker-cli");
    let keys = sb.keygen();
    let keys = keys.to_str().unwrap();
    let hello = example("hello.yaml");
    let hello = hello.to_str().unwrap();
    let redis = "redis://127.0.0.1:1/0";
    let cases: [(&[&str], &str); 3] = [
        // The manifest's backends are memory (the default).
        (&[], "uses memory backends"),
        // Asked for on the command line.
        (&["--backend", "memory"], "uses memory backends"),
        (
            &["--backend", "postgres"],
            "--backend: `postgres`: expected memory, redis or tcp",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "--pipeline",
            hello,
            "--group",
            "work",
            "--redis",
            redis,
            "--keys",
            keys,
            "--admin",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let out = worker(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
}

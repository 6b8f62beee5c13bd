//! `edgethumb work` reads its settings through the core's one table: a flag and its
//! environment variable are refused with the same reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::undocumented_unsafe_blocks
)] // test code

use std::process::Command;

/// `edgethumb work` on an empty local spool, with `flags` and `env`; its stderr (it must fail).
fn work_fails(flags: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgethumb"));
    command
        .args(["work", "--once", "--local-queue"])
        .arg(dir.path().join("spool"))
        .arg("--store-dir")
        .arg(dir.path().join("store"))
        .args(flags);
    for setting in edgethumb::worker::SETTINGS {
        command.env_remove(setting.env);
    }
    let out = command.envs(env.iter().copied()).output().unwrap();
    assert!(!out.status.success(), "{flags:?} {env:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_value_is_refused_alike_from_the_flag_and_the_environment() {
    for (flag, env, value, reason) in [
        (
            "--target-score",
            "EDGETHUMB_TARGET_SCORE",
            "101",
            "\"101\" is invalid: a number in 0..=100",
        ),
        (
            "--concurrency",
            "EDGETHUMB_CONCURRENCY",
            "0",
            "\"0\" is invalid: an integer in 1..=64",
        ),
        (
            "--cache-control",
            "EDGETHUMB_CACHE_CONTROL",
            " ",
            "\" \" is invalid: a non-empty single-line ASCII header value",
        ),
        (
            "--max-encodes",
            "EDGETHUMB_MAX_ENCODES",
            "99",
            "\"99\" is invalid: an integer in 1..=20",
        ),
    ] {
        let from_flag = work_fails(&[flag, value], &[]);
        let from_env = work_fails(&[], &[(env, value)]);
        assert!(from_flag.contains(reason), "{from_flag}");
        assert!(from_flag.contains(flag), "{from_flag}");
        assert!(from_env.contains(reason), "{from_env}");
        assert!(from_env.contains(env), "{from_env}");
    }
}

#[test]
fn a_good_flag_does_not_hide_a_bad_variable() {
    // Every source is checked (both are the operator's input); the flag wins only over a
    // valid variable (`WorkerConfig::from_sources`'s unit tests).
    let err = work_fails(
        &["--target-score", "70"],
        &[("EDGETHUMB_TARGET_SCORE", "high")],
    );
    assert!(err.contains("EDGETHUMB_TARGET_SCORE"), "{err}");
}

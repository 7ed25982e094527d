//! The `holdfast` binary without services: start-up failures name the service and its address
//! and never print a password, whatever the log level; the configuration's layers (flags over
//! environment over file over defaults) and its refusal of unknown keys.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SECRET: &str = "hunter2";

/// Runs `holdfast` with `args` (debug logs on); returns its output and how long it took.
fn holdfast(args: &[&str]) -> (Output, Duration) {
    holdfast_with(args, &[])
}

/// Runs `holdfast` with `args` and no `HOLDFAST_*` variable but those of `env`.
fn holdfast_with(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("HOLDFAST_KAFKA_BROKERS")
        .env_remove("HOLDFAST_REDIS_URL")
        .env_remove("HOLDFAST_POSTGRES_URL")
        .env_remove("HOLDFAST_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    (output, started.elapsed())
}

/// A config file with `text`, unique to this test process and `name`; removed when dropped.
struct ConfigFile(String);

impl std::ops::Deref for ConfigFile {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config_file(name: &str, text: &str) -> ConfigFile {
    let path = std::env::temp_dir().join(format!("holdfast-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).expect("the temporary directory is writable");
    ConfigFile(path.display().to_string())
}

/// Asserts a start-up failure: exit 2, within `limit`, stderr holding every one of `named`
/// and no password.
fn assert_fails_naming(args: &[&str], named: &[&str], limit: Duration) {
    let (output, took) = holdfast(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(took < limit, "{args:?} took {took:?}: {stderr}");
    for name in named {
        assert!(stderr.contains(name), "{args:?}: `{name}` not in: {stderr}");
    }
    assert!(
        !stderr.contains(SECRET) && !stdout.contains(SECRET),
        "{args:?} printed the password: {stderr}{stdout}"
    );
}

#[test]
fn a_redis_that_does_not_answer_is_named_after_the_wait() {
    assert_fails_naming(
        &[
            "run",
            "--brokers",
            "127.0.0.1:1",
            "--redis",
            "redis://:hunter2@127.0.0.1:1",
            "--postgres",
            "postgres://u:hunter2@127.0.0.1:1/db",
            "--connect-timeout-s",
            "2",
        ],
        &[
            "redis at 127.0.0.1:1",
            "did not answer within 2 s",
            "refused",
        ],
        Duration::from_secs(20),
    );
}

#[test]
fn a_postgresql_that_does_not_answer_is_retried_then_named() {
    assert_fails_naming(
        &[
            "verify",
            "--brokers",
            "127.0.0.1:1",
            "--truth",
            "/dev/null",
            "--postgres",
            "postgres://u:hunter2@127.0.0.1:1/orders",
            "--connect-timeout-s",
            "2",
        ],
        &[
            "postgresql at 127.0.0.1:1/orders (user u)",
            "did not answer within 2 s",
            "not answering yet",
        ],
        Duration::from_secs(20),
    );
}

#[test]
fn brokers_that_do_not_answer_are_named_after_the_wait() {
    assert_fails_naming(
        &[
            "create-topic",
            "--brokers",
            "127.0.0.1:1",
            "--connect-timeout-s",
            "2",
        ],
        &["kafka at 127.0.0.1:1", "did not answer within 2 s"],
        Duration::from_secs(30),
    );
}

#[test]
fn a_bad_flag_is_named_and_exits_2() {
    assert_fails_naming(
        &["run", "--batch", "many"],
        &["--batch"],
        Duration::from_secs(10),
    );
}

/// Goal: with `--log-format json` every line on stderr is a JSON object (the attempts and the
/// failure alike), and still no password.
#[test]
fn json_logs_are_json_lines_without_secrets() {
    let (output, _) = holdfast(&[
        "verify",
        "--log-format",
        "json",
        "--brokers",
        "127.0.0.1:1",
        "--truth",
        "/dev/null",
        "--postgres",
        "postgres://u:hunter2@127.0.0.1:1/orders",
        "--connect-timeout-s",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    let last = lines.last().expect("a failure event");
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|error| error.contains("postgresql at 127.0.0.1:1/orders")),
        "{stderr}"
    );
}

/// Goal: a flag wins over the environment, which wins over the config file, which wins over
/// the defaults, as `holdfast config` prints them. Method: one key set in all three places,
/// then in two, then in the file only; and a key set nowhere.
#[test]
fn flags_win_over_the_environment_over_the_file_over_the_defaults() {
    let file = config_file(
        "precedence",
        "brokers = \"file:1\"\ntopic = \"file-topic\"\n[consumer]\nbatch_size = 64\n",
    );
    let config = |extra: &[&str], env: &[(&str, &str)]| {
        let args = [&["config", "--config", &file][..], extra].concat();
        let (output, _) = holdfast_with(&args, env);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let env = [("HOLDFAST_KAFKA_BROKERS", "env:1")];
    assert!(config(&["--brokers", "flag:1"], &env).contains("brokers = \"flag:1\""));
    assert!(config(&[], &env).contains("brokers = \"env:1\""));
    let from_file = config(&[], &[]);
    for line in [
        "brokers = \"file:1\"",
        "topic = \"file-topic\"",
        "batch_size = 64",
        "concurrency = 8",
    ] {
        assert!(from_file.contains(line), "`{line}` not in: {from_file}");
    }
    let via_env = config(&[], &[("HOLDFAST_CONFIG", &file)]);
    assert!(via_env.contains("batch_size = 64"), "{via_env}");
}

/// Goal: the service commands read the config file: `run` reaches for the Redis address the
/// file names (and says so), and a key the file should not have stops every command before
/// it connects anywhere, naming the key and the file.
#[test]
fn the_commands_take_the_config_file_and_refuse_an_unknown_key() {
    let file = config_file(
        "redis",
        "brokers = \"127.0.0.1:1\"\nredis = \"redis://:hunter2@127.0.0.1:1/0\"\n\
         postgres = \"postgres://u@127.0.0.1:1/orders\"\nconnect_timeout_s = 1\n",
    );
    assert_fails_naming(
        &["run", "--config", &file],
        &["redis", "127.0.0.1:1"],
        Duration::from_secs(20),
    );
    let typo = config_file("typo", "[consumer]\nbatch = 5\n");
    let commands = [
        "run",
        "compensate",
        "produce",
        "verify",
        "create-topic",
        "config",
    ];
    for command in commands {
        let mut args = vec![command, "--config", &typo];
        if matches!(command, "produce" | "verify") {
            args.extend(["--truth", "/dev/null"]);
        }
        assert_fails_naming(&args, &["batch", &typo], Duration::from_secs(10));
    }
    assert_fails_naming(
        &["run"],
        &["--brokers", "HOLDFAST_KAFKA_BROKERS"],
        Duration::from_secs(10),
    );
}

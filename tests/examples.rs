//! Every producer example runs as its own doc says, with no AWS setup at all: each example whose
//! doc shows `AWS_ENDPOINT_URL=http://127.0.0.1:4567 cargo run --example NAME -- my-stream` is run
//! with that argument against a simulator (`kpl_sim::Sim`, what `kpl sim` serves) on a free port,
//! in an environment with nothing but `AWS_ENDPOINT_URL` and an empty `HOME` (so no credentials,
//! region or profile from the environment or `~/.aws`), and must exit 0.
//!
//! How the examples' binaries are found: Cargo has no `CARGO_BIN_EXE_*` for examples, and a
//! `cargo run --example` per example from inside a test is slow and contends for the build lock.
//! So the test builds them once with the Cargo that runs it (`env!("CARGO")`), with the same
//! target folder, `--workspace --examples --all-features --offline` (the package and feature
//! selection of the test command, `cargo test --workspace --all-features`, which has built the
//! same binaries already: a second of up-to-date checks), and runs the binaries Cargo reports.
//! Building from here, not trusting whatever lies in `target/debug/examples`, means a filtered
//! run (`cargo test --test examples`) never runs stale examples. Cargo holds the build lock only
//! while it compiles, not while tests run, so the nested build does not wait on its parent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kpl_sim::{Sim, SimConfig};

/// What an example's doc must show to be run here (before the name and after it).
const DOC_COMMAND: (&str, &str) = (
    "AWS_ENDPOINT_URL=http://127.0.0.1:4567 cargo run --example ",
    " -- my-stream",
);

/// The examples whose doc shows [`DOC_COMMAND`], by name.
fn documented_producer_examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let line = line.trim_start_matches("//!").trim();
            if let Some(rest) = line.strip_prefix(DOC_COMMAND.0)
                && let Some(name) = rest.strip_suffix(DOC_COMMAND.1)
            {
                assert_eq!(
                    Some(name),
                    path.file_stem().and_then(|s| s.to_str()),
                    "{} documents another example's command",
                    path.display()
                );
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    names
}

/// Builds every example and returns the binaries Cargo made, by example name.
fn build_examples() -> Vec<(String, PathBuf)> {
    let mut cargo = Command::new(env!("CARGO"));
    // Cargo sets these for the test process, not for itself: passed on, they would make build
    // scripts that watch them (ring's watches CARGO_MANIFEST_DIR) look changed, and the nested
    // build and the test command would rebuild each other's dependencies every time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            cargo.env_remove(name.as_ref());
        }
    }
    let out = cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--workspace",
            "--examples",
            "--all-features",
            "--offline",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "cargo build --examples failed");
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &message["target"];
        if message["reason"] == "compiler-artifact"
            && target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "example"))
            && let (Some(name), Some(exe)) =
                (target["name"].as_str(), message["executable"].as_str())
        {
            binaries.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    binaries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_producer_example_runs_as_documented_with_no_aws_setup() {
    let names = documented_producer_examples();
    assert!(
        names.len() >= 3,
        "expected the three producer examples, found {names:?}"
    );
    let binaries = tokio::task::spawn_blocking(build_examples).await.unwrap();
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples-empty-home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    for name in names {
        let exe = binaries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, exe)| exe.clone())
            .unwrap_or_else(|| panic!("cargo built no binary for example {name}"));
        let sim = Sim::start(SimConfig {
            streams: vec![("my-stream".into(), 2)],
            ..Default::default()
        })
        .await
        .unwrap();
        run_example(&name, &exe, &home, Some(sim.endpoint())).await;
        assert!(
            sim.stats().requests > 0,
            "example {name} never reached the simulator"
        );
        sim.shutdown().await;
    }
}

/// Runs example `name` (`exe my-stream`) with nothing in its environment but `HOME` (and
/// `AWS_ENDPOINT_URL`, when given) and requires exit 0.
async fn run_example(name: &str, exe: &Path, home: &Path, endpoint: Option<&str>) {
    let mut cmd = Command::new(exe);
    cmd.arg("my-stream")
        .env_clear()
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(endpoint) = endpoint {
        cmd.env("AWS_ENDPOINT_URL", endpoint);
    }
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(300)))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "example {name} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` to its end; kills it after `limit` (a guard against a hang, not a measurement).
fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    let child = cmd.spawn().expect("spawn the example");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = done.send(());
        out
    });
    let deadline = Instant::now() + limit;
    while finished.recv_timeout(Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not end within {limit:?}");
        }
    }
    waiter.join().unwrap().expect("wait for the example")
}

/// A local endpoint named in `~/.aws/config` (`endpoint_url` in the default profile, as
/// LocalStack's and kinesalite's guides set it up) is as local as `AWS_ENDPOINT_URL`: no
/// credentials are needed for it. Before, only the environment was looked at, so such a setup
/// failed for want of credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_endpoint_from_the_aws_config_profile_needs_no_credentials() {
    let binaries = tokio::task::spawn_blocking(build_examples).await.unwrap();
    let exe = binaries
        .iter()
        .find(|(n, _)| n == "minimal_producer")
        .map(|(_, exe)| exe.clone())
        .expect("cargo built the minimal_producer example");
    let sim = Sim::start(SimConfig {
        streams: vec![("my-stream".into(), 2)],
        ..Default::default()
    })
    .await
    .unwrap();
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("examples-profile-endpoint-home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".aws/config"),
        format!(
            "[default]\nregion = eu-west-1\nendpoint_url = {}\n",
            sim.endpoint()
        ),
    )
    .unwrap();
    // No AWS_ENDPOINT_URL: the endpoint is only in the profile.
    run_example("minimal_producer", &exe, &home, None).await;
    assert!(
        sim.stats().requests > 0,
        "the example never reached the simulator"
    );
    sim.shutdown().await;
}

//! `kpl put` as a user runs it behind a CONNECT proxy, in front of a TLS `kpl sim` whose
//! certificate a test CA signed: the CA trusted with `--ca-file` or `SSL_CERT_FILE` on both
//! client paths; without it, or with a wrong proxy password, a fatal error that says what to
//! do. And `kpl sim --tls-cert --tls-key` itself.

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/tunnel.rs"]
mod tunnel;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use kpl_sim::{Sim, SimConfig, SimHandle};
use tunnel::{TestCa, connect_proxy};

// base64("user:p@ss"); the URL carries the password percent-encoded.
const AUTH: &str = "dXNlcjpwQHNz";

fn kpl_binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_kpl"))
}

/// `kpl ARGS` with `env` set and the proxy variables of this environment removed, run on a
/// blocking thread so the proxy and simulator of this test keep serving.
async fn kpl(args: Vec<String>, env: Vec<(&'static str, String)>, stdin: &'static [u8]) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(kpl_binary());
        cmd.args(&args);
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        common::run_with_stdin(cmd, stdin)
    })
    .await
    .unwrap()
}

fn put_args(endpoint: &str, client: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "put",
        "--stream",
        "s",
        "--endpoint-url",
        endpoint,
        "--client",
        client,
        "--proxy-loopback",
        "--request-timeout",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

const LINES: &[u8] = b"alpha\nbeta\ngamma\ndelta\n";

async fn tls_sim(ca: &TestCa) -> SimHandle {
    Sim::start(SimConfig {
        streams: vec![("s".into(), 2)],
        tls: Some(ca.sim_tls()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The user records stored in the simulator's stream, read back over its plain listener.
async fn stored(sim: &SimHandle) -> usize {
    common::read_all(sim.client(), "s").await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_put_through_a_connect_proxy_trusts_the_ca_from_ca_file_or_ssl_cert_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let ca_path = ca_file.to_str().unwrap().to_owned();
    let sim = tls_sim(&ca).await;
    let (proxy, tunnels) = connect_proxy(Some(AUTH)).await;
    let proxy = proxy.replace("http://", "http://user:p%40ss@");
    let mut expected = 0;
    for client in ["lean", "sdk"] {
        for by_env in [false, true] {
            let before = tunnels.opened();
            let (extra, env) = if by_env {
                (
                    vec!["--proxy", &proxy],
                    vec![("SSL_CERT_FILE", ca_path.clone())],
                )
            } else {
                (vec!["--proxy", &proxy, "--ca-file", &ca_path], vec![])
            };
            let out = kpl(put_args(sim.endpoint(), client, &extra), env, LINES).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{client} env={by_env}: {err}");
            assert!(
                tunnels.opened() > before,
                "{client} env={by_env}: no tunnel opened"
            );
            expected += 4;
            assert_eq!(stored(&sim).await, expected, "{client} env={by_env}: {err}");
        }
    }
    assert_eq!(tunnels.refused(), 0);
    assert_eq!(sim.stats().tls_handshake_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_put_without_the_ca_or_with_a_wrong_proxy_password_stops_with_what_to_do() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path()).to_str().unwrap().to_owned();
    let sim = tls_sim(&ca).await;
    let (proxy, tunnels) = connect_proxy(Some(AUTH)).await;
    let good = proxy.replace("http://", "http://user:p%40ss@");
    let wrong = proxy.replace("http://", "http://user:wrong-secret@");
    for client in ["lean", "sdk"] {
        let out = kpl(
            put_args(sim.endpoint(), client, &["--proxy", &good]),
            vec![],
            LINES,
        )
        .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{client}: {err}");
        for needed in ["not trusted", "--ca-file", "SSL_CERT_FILE"] {
            assert!(
                err.contains(needed),
                "{client}: {needed} missing from {err}"
            );
        }
        let out = kpl(
            put_args(
                sim.endpoint(),
                client,
                &["--proxy", &wrong, "--ca-file", &ca_path],
            ),
            vec![],
            LINES,
        )
        .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{client}: {err}");
        for needed in ["proxy refused", "407", "user:password"] {
            assert!(
                err.contains(needed),
                "{client}: {needed} missing from {err}"
            );
        }
        assert!(!err.contains("wrong-secret"), "{err}");
    }
    assert!(tunnels.refused() >= 2);
    assert_eq!(stored(&sim).await, 0);
}

#[test]
fn kpl_sim_with_tls_cert_serves_https_to_a_client_that_trusts_its_ca() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &ca.cert_pem).unwrap();
    std::fs::write(&key, &ca.key_pem).unwrap();
    let mut sim = Command::new(kpl_binary())
        .args(["sim", "--port", "0", "--stream", "s:1", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line.split(' ').nth(4).unwrap_or_default().to_owned();
    let put = |extra: &[&str]| {
        let mut cmd = Command::new(kpl_binary());
        cmd.args([
            "put",
            "--stream",
            "s",
            "--endpoint-url",
            &endpoint,
            "--no-proxy",
        ])
        .args(extra)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
        common::run_with_stdin(cmd, LINES)
    };
    let trusted = put(&["--ca-file", ca_path.to_str().unwrap()]);
    let untrusted = put(&[]);
    let _ = Command::new("kill").arg(sim.id().to_string()).status();
    let _ = sim.wait();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{line}");
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert_eq!(untrusted.status.code(), Some(2));
}

//! A CONNECT proxy in front of a TLS endpoint whose certificate a test CA signed: `kpl_sim`
//! serving HTTPS ([`kpl_sim::SimConfig::tls`]), the proxy counting its tunnels and the bytes
//! they carried, the CA trusted through `ConnectOptions::ca_file`, on both client paths.
//! (`--ca-file` and `SSL_CERT_FILE` on the built binary: crates/kpl-cli/tests/tls_proxy.rs.)

#[path = "common/tunnel.rs"]
mod tunnel;

use std::time::Duration;

use kpl::client::http::ProxySetting;
use kpl::client::sdk::ConnectOptions;
use kpl::client::{
    ApiErrorKind, ClientKind, KinesisApi, PutRecordsEntry, PutRecordsResultEntry, StreamId,
};
use kpl_sim::{Sim, SimConfig, SimHandle};
use tunnel::{TestCa, connect_proxy};

// base64("user:p@ss"); the URL carries the password percent-encoded.
const AUTH: &str = "dXNlcjpwQHNz";

fn options(
    endpoint: &str,
    client: ClientKind,
    proxy: &str,
    ca_file: Option<std::path::PathBuf>,
) -> ConnectOptions {
    ConnectOptions {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        attempt_timeout: Some(Duration::from_secs(10)),
        client,
        proxy: ProxySetting::Url(proxy.to_owned()),
        proxy_loopback: true,
        ca_file,
    }
}

fn entries(n: usize) -> Vec<PutRecordsEntry> {
    (0..n)
        .map(|i| PutRecordsEntry {
            partition_key: format!("k{i}"),
            explicit_hash_key: None,
            data: format!("record {i}").into(),
        })
        .collect()
}

async fn tls_sim(ca: &TestCa) -> SimHandle {
    let sim = Sim::start(SimConfig {
        streams: vec![("s".into(), 2)],
        tls: Some(ca.sim_tls()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        sim.endpoint().starts_with("https://127.0.0.1:"),
        "{}",
        sim.endpoint()
    );
    sim
}

#[tokio::test]
async fn both_client_paths_call_through_a_connect_tunnel_trusting_the_ca_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let sim = tls_sim(&ca).await;
    let (proxy, tunnels) = connect_proxy(Some(AUTH)).await;
    let proxy = proxy.replace("http://", "http://user:p%40ss@");
    let sim_addr = sim.endpoint().trim_start_matches("https://").to_owned();
    let stream = StreamId::Name("s".into());
    for kind in [ClientKind::Lean, ClientKind::Sdk] {
        let api: std::sync::Arc<dyn KinesisApi> =
            kpl::client::connect(options(sim.endpoint(), kind, &proxy, Some(ca_file.clone())))
                .await;
        // Each call's bytes pass the proxy: none goes to the endpoint on its own.
        let before = tunnels.bytes_up();
        let summary = api.describe_stream_summary(&stream).await.unwrap();
        assert_eq!(summary.open_shard_count, 2, "{kind:?}");
        let after_describe = tunnels.bytes_up();
        assert!(
            after_describe > before,
            "{kind:?}: DescribeStreamSummary bypassed the proxy"
        );
        let shards = api.list_shards(&stream, None).await.unwrap();
        assert_eq!(shards.shards.len(), 2, "{kind:?}");
        let after_list = tunnels.bytes_up();
        assert!(
            after_list > after_describe,
            "{kind:?}: ListShards bypassed the proxy"
        );
        let results = api.put_records(&stream, entries(10)).await.unwrap();
        assert!(
            results
                .iter()
                .all(|r| matches!(r, PutRecordsResultEntry::Stored { .. })),
            "{kind:?}: {results:?}"
        );
        assert!(
            tunnels.bytes_up() > after_list,
            "{kind:?}: PutRecords bypassed the proxy"
        );
    }
    assert!(tunnels.opened() >= 2, "one tunnel per client at least");
    assert!(
        tunnels.targets().iter().all(|t| *t == sim_addr),
        "{:?}",
        tunnels.targets()
    );
    assert_eq!(tunnels.refused(), 0);
    let stats = sim.stats();
    assert_eq!(stats.entries_forwarded, 20);
    assert_eq!(stats.tls_handshake_failures, 0);
}

#[tokio::test]
async fn an_untrusted_certificate_is_fatal_and_says_how_to_trust_the_ca() {
    let ca = TestCa::new();
    let sim = tls_sim(&ca).await;
    let (proxy, tunnels) = connect_proxy(None).await;
    let stream = StreamId::Name("s".into());
    for kind in [ClientKind::Lean, ClientKind::Sdk] {
        let api = kpl::client::connect(options(sim.endpoint(), kind, &proxy, None)).await;
        let describe = api.describe_stream_summary(&stream).await.unwrap_err();
        let put = api.put_records(&stream, entries(1)).await.unwrap_err();
        for error in [describe, put] {
            assert_eq!(error.kind, ApiErrorKind::Certificate, "{kind:?}: {error:?}");
            assert!(!error.is_retryable(), "{kind:?}: {error:?}");
            let text = error.to_string();
            for needed in ["not trusted", "UnknownIssuer", "--ca-file", "SSL_CERT_FILE"] {
                assert!(
                    text.contains(needed),
                    "{kind:?}: {needed} missing from {text}"
                );
            }
        }
    }
    // The handshakes failed at the simulator, through the tunnels; nothing was stored.
    assert!(tunnels.opened() >= 4, "{}", tunnels.opened());
    // (The simulator counts a failed handshake when it reads the client's alert, which may
    // come after the client has returned its error.)
    for _ in 0..500 {
        if sim.stats().tls_handshake_failures >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sim.stats().tls_handshake_failures >= 4, "{:?}", sim.stats());
    assert_eq!(sim.stats().entries_forwarded, 0);
}

#[tokio::test]
async fn a_wrong_proxy_password_is_a_fatal_407_naming_the_credentials() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let sim = tls_sim(&ca).await;
    let (proxy, tunnels) = connect_proxy(Some(AUTH)).await;
    let stream = StreamId::Name("s".into());
    for url in [
        proxy.replace("http://", "http://user:wrong-secret@"),
        proxy.clone(),
    ] {
        for kind in [ClientKind::Lean, ClientKind::Sdk] {
            let api =
                kpl::client::connect(options(sim.endpoint(), kind, &url, Some(ca_file.clone())))
                    .await;
            let describe = api.describe_stream_summary(&stream).await.unwrap_err();
            let put = api.put_records(&stream, entries(1)).await.unwrap_err();
            for error in [describe, put] {
                assert_eq!(error.status, Some(407), "{kind:?} {url}: {error:?}");
                assert!(!error.is_retryable(), "{kind:?} {url}: {error:?}");
                let text = error.to_string();
                for needed in ["proxy refused", "407", "user:password"] {
                    assert!(
                        text.contains(needed),
                        "{kind:?}: {needed} missing from {text}"
                    );
                }
                assert!(!text.contains("wrong-secret"), "{text}");
            }
        }
    }
    assert_eq!(tunnels.opened(), 0);
    assert_eq!(tunnels.refused(), 8);
    assert_eq!(sim.stats().requests, 0);
}

#[tokio::test]
async fn a_ca_file_that_is_not_a_certificate_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.pem");
    // A PEM block whose content is no certificate: the connector would panic on it.
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let error = kpl::client::http::http_client(&ProxySetting::None, false, Some(&path))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("broken.pem") && error.contains("certificate 1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_sim_certificate_or_key_that_cannot_serve_is_a_clear_error() {
    let ca = TestCa::new();
    let start = |cert: &str, key: &str| {
        Sim::start(SimConfig {
            tls: Some(kpl_sim::SimTls {
                cert_chain_pem: cert.as_bytes().to_vec(),
                key_pem: key.as_bytes().to_vec(),
            }),
            ..Default::default()
        })
    };
    let no_key = start(&ca.cert_pem, &ca.cert_pem)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        no_key.contains("no private key") && no_key.contains("PEM"),
        "{no_key}"
    );
    let no_cert = start("", &ca.key_pem).await.err().unwrap().to_string();
    assert!(no_cert.contains("no certificate"), "{no_cert}");
    // A key of another certificate.
    let other = TestCa::new();
    let mismatch = start(&ca.cert_pem, &other.key_pem)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(mismatch.contains("does not fit"), "{mismatch}");
}

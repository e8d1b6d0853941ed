//! The proxy setting on every client path: a forward proxy on loopback that counts the
//! connections it carried and checks their `Proxy-Authorization`, in front of `kpl_sim`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kpl::client::http::ProxySetting;
use kpl::client::sdk::ConnectOptions;
use kpl::client::{ClientKind, PutRecordsEntry, StreamId};
use kpl_sim::{Sim, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw.
#[derive(Default)]
struct Counts {
    /// Connections whose first request was absolute-form with the expected credentials.
    forwarded: AtomicU64,
    /// Connections refused (no or wrong credentials): answered 407.
    refused: AtomicU64,
}

/// A forward proxy for `http://` targets: reads the first request's head, checks
/// `Proxy-Authorization: Basic base64(user:password)`, connects to the absolute-form target
/// and then copies bytes both ways (later requests on the kept-alive connection follow).
async fn forward_proxy(expected_auth: &'static str) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let counts = c.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let target = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|u| u.strip_prefix("http://"))
                    .and_then(|rest| rest.split('/').next())
                    .map(str::to_owned);
                let auth_ok = text.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("proxy-authorization:")
                        && l.ends_with(&format!("Basic {expected_auth}"))
                });
                let Some(target) = target.filter(|_| auth_ok) else {
                    counts.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                };
                counts.forwarded.fetch_add(1, Ordering::SeqCst);
                let mut upstream = TcpStream::connect(target).await.unwrap();
                upstream.write_all(&head).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, counts)
}

fn options(
    endpoint: &str,
    client: ClientKind,
    proxy: ProxySetting,
    loopback: bool,
) -> ConnectOptions {
    ConnectOptions {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        attempt_timeout: Some(Duration::from_secs(10)),
        client,
        proxy,
        proxy_loopback: loopback,
        ca_file: None,
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

// base64("user:p@ss") with the password percent-encoded in the URL.
const AUTH: &str = "dXNlcjpwQHNz";

#[tokio::test]
async fn both_client_paths_put_through_a_forward_proxy_with_credentials() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.create_stream("s", 2).await.unwrap();
    let (proxy, counts) = forward_proxy(AUTH).await;
    let url = proxy.replace("http://", "http://user:p%40ss@");
    let stream = StreamId::Name("s".into());
    for kind in [ClientKind::Lean, ClientKind::Sdk] {
        let before = counts.forwarded.load(Ordering::SeqCst);
        let api = kpl::client::connect(options(
            sim.endpoint(),
            kind,
            ProxySetting::Url(url.clone()),
            true,
        ))
        .await;
        let shards = api.list_shards(&stream, None).await.unwrap();
        assert_eq!(shards.shards.len(), 2);
        let results = api.put_records(&stream, entries(10)).await.unwrap();
        assert!(
            results
                .iter()
                .all(|r| matches!(r, kpl::client::PutRecordsResultEntry::Stored { .. })),
            "{kind:?}: {results:?}"
        );
        assert!(
            counts.forwarded.load(Ordering::SeqCst) > before,
            "{kind:?}: the calls did not pass the proxy"
        );
    }
    assert_eq!(counts.refused.load(Ordering::SeqCst), 0);
    assert_eq!(sim.stats().entries_forwarded, 20);
}

#[tokio::test]
async fn wrong_proxy_credentials_fail_the_call_and_loopback_bypasses_by_default() {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    sim.create_stream("s", 1).await.unwrap();
    let (proxy, counts) = forward_proxy(AUTH).await;
    let stream = StreamId::Name("s".into());
    // Loopback endpoint, proxy_loopback off: straight to the endpoint.
    let api = kpl::client::connect(options(
        sim.endpoint(),
        ClientKind::Lean,
        ProxySetting::Url(proxy.clone()),
        false,
    ))
    .await;
    api.put_records(&stream, entries(3)).await.unwrap();
    assert_eq!(counts.forwarded.load(Ordering::SeqCst), 0);
    assert_eq!(counts.refused.load(Ordering::SeqCst), 0);
    // Through the proxy without credentials: 407, not retryable.
    for kind in [ClientKind::Lean, ClientKind::Sdk] {
        let api = kpl::client::connect(options(
            sim.endpoint(),
            kind,
            ProxySetting::Url(proxy.clone()),
            true,
        ))
        .await;
        let error = api.put_records(&stream, entries(1)).await.unwrap_err();
        assert_eq!(error.status, Some(407), "{kind:?}: {error:?}");
        assert!(!error.is_retryable(), "{kind:?}: {error:?}");
        let text = error.to_string();
        assert!(
            text.contains("proxy refused") && text.contains("user:password"),
            "{kind:?}: {text}"
        );
    }
    assert_eq!(counts.refused.load(Ordering::SeqCst), 2);
    assert_eq!(sim.stats().entries_forwarded, 3);
}

#[tokio::test]
async fn an_unusable_proxy_url_or_ca_file_is_a_clear_error() {
    let bad =
        kpl::client::http::http_client(&ProxySetting::Url("socks5://h:1".into()), false, None)
            .unwrap_err()
            .to_string();
    assert!(
        bad.contains("socks5://h:1") && bad.contains("http://"),
        "{bad}"
    );
    let secret = kpl::client::http::http_client(
        &ProxySetting::Url("ftp://u:secret@h:1".into()),
        false,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(!secret.contains("secret"), "{secret}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let ca = kpl::client::http::http_client(&ProxySetting::None, false, Some(&path))
        .unwrap_err()
        .to_string();
    assert!(ca.contains("ca.pem") && ca.contains("PEM"), "{ca}");
}

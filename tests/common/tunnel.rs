//! A CONNECT proxy on loopback that counts the tunnels it opened and the bytes it carried
//! (checking `Proxy-Authorization` when it expects credentials), and a test CA that signs the
//! certificate of a TLS `kpl sim` for 127.0.0.1. Shared by tests/tls_proxy.rs and the CLI's
//! crates/kpl-cli/tests/tls_proxy.rs.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw.
#[derive(Default)]
pub struct Tunnels {
    /// Tunnels opened (CONNECT answered 200).
    pub opened: AtomicU64,
    /// CONNECTs refused with 407 (no or wrong credentials).
    pub refused: AtomicU64,
    /// Bytes carried from the client to the target, through every tunnel.
    pub bytes_up: AtomicU64,
    /// The `host:port` of every tunnel opened.
    pub targets: Mutex<Vec<String>>,
}

impl Tunnels {
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
    pub fn bytes_up(&self) -> u64 {
        self.bytes_up.load(Ordering::SeqCst)
    }
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

/// A CONNECT proxy on 127.0.0.1: `http://127.0.0.1:PORT`. With `expected_auth`
/// (base64 of `user:password`), a CONNECT without exactly that `Proxy-Authorization: Basic`
/// is answered 407. Anything but CONNECT is answered 405.
pub async fn connect_proxy(expected_auth: Option<&'static str>) -> (String, Arc<Tunnels>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tunnels = Arc::new(Tunnels::default());
    let seen = tunnels.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(tunnel(client, expected_auth, seen.clone()));
        }
    });
    (url, tunnels)
}

async fn tunnel(mut client: TcpStream, expected_auth: Option<&str>, tunnels: Arc<Tunnels>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await.unwrap_or(0) == 0 || head.len() > 16 * 1024 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut words = text.split_whitespace();
    let (method, target) = (words.next(), words.next().map(str::to_owned));
    let Some(target) = target.filter(|_| method == Some("CONNECT")) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    let auth_ok = expected_auth.is_none_or(|expected| {
        text.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("proxy-authorization:")
                && l.trim_end().ends_with(&format!("Basic {expected}"))
        })
    });
    if !auth_ok {
        tunnels.refused.fetch_add(1, Ordering::SeqCst);
        let _ = client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let Ok(upstream) = TcpStream::connect(&target).await else {
        let _ = client
            .write_all(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        return;
    };
    tunnels.opened.fetch_add(1, Ordering::SeqCst);
    tunnels.targets.lock().unwrap().push(target);
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let counted = tunnels.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    counted.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
                    if up_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = up_write.shutdown().await;
    });
    let _ = tokio::io::copy(&mut up_read, &mut client_write).await;
    let _ = client_write.shutdown().await;
    let _ = up.await;
}

/// A test CA and a server certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA's certificate (PEM): what a client must trust.
    pub ca_pem: String,
    /// The server's certificate (PEM).
    pub cert_pem: String,
    /// The server's private key (PEM).
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "kpl test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "kpl sim");
        let cert = server.signed_by(&key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The simulator's TLS setting for this certificate.
    pub fn sim_tls(&self) -> kpl_sim::SimTls {
        kpl_sim::SimTls {
            cert_chain_pem: self.cert_pem.clone().into_bytes(),
            key_pem: self.key_pem.clone().into_bytes(),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem`.
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

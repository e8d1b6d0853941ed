//! HTTPS for the simulator ([`SimConfig::tls`](crate::SimConfig::tls), `kpl sim --tls-cert`):
//! rustls on ring in front of the same fault layer, so a producer's proxy and trust settings
//! (a CONNECT proxy, a private CA) can be tried against it.
//!
//! Handshakes run on tasks of their own: a client that connects and never speaks TLS holds
//! up no other connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::SimError;
use crate::layer::{FaultStream, Shared, accept_admitted};

/// Longest a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate the simulator presents, and its key, both PEM.
#[derive(Clone)]
pub struct SimTls {
    /// The server certificate, then any intermediates (PEM). Its names must cover the host
    /// clients connect to: `127.0.0.1` (an IP SAN) for the simulator's endpoint.
    pub cert_chain_pem: Vec<u8>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for SimTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SimTls")
            .field(
                "cert_chain_pem",
                &format!("{} bytes", self.cert_chain_pem.len()),
            )
            .finish_non_exhaustive()
    }
}

impl SimTls {
    /// Reads the certificate chain and key from PEM files.
    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, SimError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| SimError::Tls {
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        Ok(SimTls {
            cert_chain_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// The rustls acceptor for this certificate.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, SimError> {
        let bad = |reason: String| SimError::Tls { reason };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&self.cert_chain_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("the certificate PEM does not parse: {e}")))?;
        if chain.is_empty() {
            return Err(bad("no certificate in the certificate PEM".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| bad(format!("no private key in the key PEM: {e}")))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad(format!("the key does not fit the certificate: {e}")))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A listener that hands axum connections once their TLS handshake is done (the fault
/// layer's resets and down period apply as on the plain listener).
pub(crate) struct TlsFaultListener {
    incoming: mpsc::Receiver<(FaultStream<TlsStream<TcpStream>>, SocketAddr)>,
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsFaultListener {
    pub(crate) fn new(
        inner: TcpListener,
        shared: Arc<Shared>,
        acceptor: TlsAcceptor,
    ) -> std::io::Result<Self> {
        let addr = inner.local_addr()?;
        let (send, incoming) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = accept_admitted(&inner, &shared).await;
                let (acceptor, send, shared) = (acceptor.clone(), send.clone(), shared.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = send.send((FaultStream::new(tls, shared), peer)).await;
                        }
                        Ok(Err(error)) => {
                            shared.lock().stats.tls_handshake_failures += 1;
                            tracing::debug!(%peer, %error, "kpl sim: TLS handshake failed");
                        }
                        Err(_) => {
                            shared.lock().stats.tls_handshake_failures += 1;
                            tracing::debug!(%peer, "kpl sim: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsFaultListener {
            incoming,
            addr,
            accepting,
        })
    }
}

impl Drop for TlsFaultListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsFaultListener {
    type Io = FaultStream<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accepting task ended (it never does while this listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

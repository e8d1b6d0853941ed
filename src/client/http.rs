//! The one HTTP client both client paths send through: hyper with rustls on ring, the proxy
//! ([`ProxySetting`]) and the trusted roots (native roots plus [`super::sdk::ConnectOptions::ca_file`]).
//! The connection failures no retry can fix (an untrusted certificate, a proxy's 407 to a
//! CONNECT) are recognised here for both client paths.
//!
//! aws-config hands this client to its credential providers too (STS, SSO, container and
//! instance metadata), so they follow the same proxy; the metadata addresses (169.254.0.0/16,
//! `fd00:ec2::/32`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`'s host) always bypass it.

use std::path::{Path, PathBuf};

use aws_sdk_kinesis::config::SharedHttpClient;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// Which proxy the HTTP client uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// `HTTPS_PROXY` / `https_proxy` for `https://` calls, `HTTP_PROXY` / `http_proxy` for
    /// `http://` calls (`ALL_PROXY` / `all_proxy` for either when unset), `NO_PROXY` /
    /// `no_proxy` for the hosts that bypass it. No variable set: no proxy.
    #[default]
    FromEnv,
    /// This proxy for every call (`http://[user:password@]host:port`; percent-encode `@` and
    /// `:` in the user or password). `NO_PROXY` still applies.
    Url(String),
    /// No proxy, whatever the environment says.
    None,
}

/// A proxy or trust setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// The proxy URL does not parse or is not `http://` / `https://`.
    #[error("proxy URL {url:?} is not usable ({reason}): give http://[user:password@]host:port")]
    ProxyUrl {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// The CA file cannot be read or holds no PEM certificate.
    #[error("CA file {path}: {reason}; give a PEM file of one or more CA certificates")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Hosts that never go through a proxy: the instance, container and pod-identity metadata
/// services.
const METADATA_HOSTS: &str = "169.254.0.0/16,fd00:ec2::/32";
/// Hosts that bypass the proxy unless `proxy_loopback` is set.
const LOOPBACK_HOSTS: &str = "localhost,127.0.0.0/8,::1";

/// Where the proxy setting sends calls: per scheme, and the bypass rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProxyRoutes {
    pub(crate) http: Option<String>,
    pub(crate) https: Option<String>,
    pub(crate) no_proxy: String,
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .find(|v| !v.trim().is_empty())
}

impl ProxyRoutes {
    /// The routes for `setting`, reading the environment through `env`.
    pub(crate) fn resolve(
        setting: &ProxySetting,
        proxy_loopback: bool,
        env: impl Fn(&[&str]) -> Option<String>,
    ) -> ProxyRoutes {
        let (http, https) = match setting {
            ProxySetting::None => (None, None),
            ProxySetting::Url(url) => (Some(url.clone()), Some(url.clone())),
            ProxySetting::FromEnv => {
                let all = env(&["ALL_PROXY", "all_proxy"]);
                (
                    env(&["HTTP_PROXY", "http_proxy"]).or_else(|| all.clone()),
                    env(&["HTTPS_PROXY", "https_proxy"]).or(all),
                )
            }
        };
        let mut no_proxy = METADATA_HOSTS.to_owned();
        if let Some(imds) = env(&["AWS_EC2_METADATA_SERVICE_ENDPOINT"])
            && let Ok(uri) = imds.parse::<http::Uri>()
            && let Some(host) = uri.host()
        {
            no_proxy.push(',');
            no_proxy.push_str(host.trim_start_matches('[').trim_end_matches(']'));
        }
        if !proxy_loopback {
            no_proxy.push(',');
            no_proxy.push_str(LOOPBACK_HOSTS);
        }
        if let Some(rules) = env(&["NO_PROXY", "no_proxy"]) {
            no_proxy.push(',');
            no_proxy.push_str(&rules);
        }
        ProxyRoutes {
            http,
            https,
            no_proxy,
        }
    }
}

/// The proxy URL without its password, for messages.
fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(s, rest)| {
        rest.split_once('@')
            .map(|(user, host)| (s, user.split(':').next().unwrap_or(""), host))
    }) {
        Some((scheme, user, host)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

fn proxy_config(
    url: &str,
    make: fn(&str) -> Result<ProxyConfig, aws_smithy_http_client::proxy::ProxyError>,
    no_proxy: &str,
) -> Result<ProxyConfig, HttpSetupError> {
    make(url)
        .map(|c| c.no_proxy(no_proxy))
        .map_err(|e| HttpSetupError::ProxyUrl {
            url: redact(url),
            reason: e.to_string(),
        })
}

/// The trust store: the platform's roots (which honour `SSL_CERT_FILE` / `SSL_CERT_DIR`) and
/// the certificates in `ca_file`.
fn trust(ca_file: Option<&Path>) -> Result<TlsContext, HttpSetupError> {
    let mut store = TrustStore::default();
    if let Some(path) = ca_file {
        let bad = |reason: String| HttpSetupError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        // The connector parses the file again on every connection it builds and panics on
        // what it cannot read: every certificate is checked here, once.
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("unreadable PEM ({e})")))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| bad(format!("certificate {} is not usable ({e})", i + 1)))?;
        }
        store = store.with_pem_certificate(pem);
    }
    TlsContext::builder()
        .with_trust_store(store)
        .build()
        .map_err(|e| HttpSetupError::CaFile {
            path: ca_file.map(Path::to_owned).unwrap_or_default(),
            reason: e.to_string(),
        })
}

/// The HTTP client for `proxy` and `ca_file`: hyper with rustls on ring (no aws-lc, no
/// OpenSSL). Loopback hosts bypass the proxy unless `proxy_loopback`.
pub fn http_client(
    proxy: &ProxySetting,
    proxy_loopback: bool,
    ca_file: Option<&Path>,
) -> Result<SharedHttpClient, HttpSetupError> {
    let routes = ProxyRoutes::resolve(proxy, proxy_loopback, env);
    let tls = trust(ca_file)?;
    let configs: Vec<ProxyConfig> = match (&routes.http, &routes.https) {
        (None, None) => vec![ProxyConfig::disabled()],
        (Some(h), Some(s)) if h == s => {
            vec![proxy_config(h, |u| ProxyConfig::all(u), &routes.no_proxy)?]
        }
        (Some(h), None) => vec![proxy_config(h, |u| ProxyConfig::http(u), &routes.no_proxy)?],
        (None, Some(s)) => vec![proxy_config(
            s,
            |u| ProxyConfig::https(u),
            &routes.no_proxy,
        )?],
        (Some(h), Some(s)) => vec![
            proxy_config(h, |u| ProxyConfig::http(u), &routes.no_proxy)?,
            proxy_config(s, |u| ProxyConfig::https(u), &routes.no_proxy)?,
        ],
    };
    let client = |proxy: ProxyConfig| {
        let tls = tls.clone();
        aws_smithy_http_client::Builder::new().build_with_connector_fn(
            move |settings, components| {
                let mut builder = aws_smithy_http_client::Connector::builder();
                builder.set_connector_settings(settings.cloned());
                if let Some(components) = components {
                    builder.set_sleep_impl(components.sleep_impl());
                }
                builder
                    .proxy_config(proxy.clone())
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .tls_context(tls.clone())
                    .build()
            },
        )
    };
    let mut configs = configs.into_iter();
    let first = client(configs.next().expect("at least one proxy configuration"));
    Ok(match configs.next() {
        None => first,
        Some(https) => SharedHttpClient::new(ByScheme {
            http: first,
            https: client(https),
        }),
    })
}

/// One client per scheme (`HTTP_PROXY` and `HTTPS_PROXY` differ), each keeping its pool.
#[derive(Debug)]
struct ByScheme {
    http: SharedHttpClient,
    https: SharedHttpClient,
}

impl HttpClient for ByScheme {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(BySchemeConnector {
            http: self.http.http_connector(settings, components),
            https: self.https.http_connector(settings, components),
        })
    }
}

#[derive(Debug)]
struct BySchemeConnector {
    http: SharedHttpConnector,
    https: SharedHttpConnector,
}

impl HttpConnector for BySchemeConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        if request.uri().starts_with("http://") {
            self.http.call(request)
        } else {
            self.https.call(request)
        }
    }
}

/// A connection failure no retry can fix, found under a client's error: the certificate of
/// the endpoint (or of a TLS-inspecting proxy) is not trusted, or the proxy refused the
/// CONNECT tunnel for its credentials (407). Both client paths classify their transport
/// errors through this first.
pub(crate) fn refused_connection(
    error: &(dyn std::error::Error + 'static),
) -> Option<crate::client::ApiError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(reason)) = e.downcast_ref::<rustls::Error>() {
            return Some(crate::client::ApiError {
                kind: crate::client::ApiErrorKind::Certificate,
                code: None,
                status: None,
                message: format!("the TLS certificate presented is not trusted ({reason:?})"),
            });
        }
        // hyper-util's tunnel error is private: its text is all there is.
        if e.to_string() == "tunnel error: proxy authorization required" {
            return Some(crate::client::ApiError::from_answer(
                407,
                None,
                "the proxy refused the CONNECT tunnel (407 Proxy Authentication Required)",
            ));
        }
        // `io::Error::source` skips the error it wraps: look at that one first.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// A client whose every call fails with `error` (a setting that cannot work, reported on
/// each call as a connection error).
pub(crate) fn failing_client(error: HttpSetupError) -> SharedHttpClient {
    let message = std::sync::Arc::new(error.to_string());
    aws_smithy_runtime_api::client::http::http_client_fn(move |_, _| {
        SharedHttpConnector::new(Failing(message.clone()))
    })
}

#[derive(Debug)]
struct Failing(std::sync::Arc<String>);

impl HttpConnector for Failing {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let message: String = self.0.as_ref().clone();
        HttpConnectorFuture::ready(Err(
            aws_smithy_runtime_api::client::result::ConnectorError::user(message.into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&[&str]) -> Option<String> {
        move |names| {
            names.iter().find_map(|n| {
                vars.iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.to_string())
            })
        }
    }

    #[test]
    fn the_environment_routes_each_scheme_and_metadata_always_bypasses() {
        let env = fake(&[
            ("https_proxy", "http://s:1"),
            ("HTTP_PROXY", "http://h:2"),
            ("NO_PROXY", ".internal"),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                "http://[fd00:ec2::254]/",
            ),
        ]);
        let routes = ProxyRoutes::resolve(&ProxySetting::FromEnv, false, &env);
        assert_eq!(routes.https.as_deref(), Some("http://s:1"));
        assert_eq!(routes.http.as_deref(), Some("http://h:2"));
        for rule in [
            "169.254.0.0/16",
            "fd00:ec2::254",
            "127.0.0.0/8",
            "localhost",
            ".internal",
        ] {
            assert!(
                routes.no_proxy.split(',').any(|r| r == rule),
                "{rule}: {routes:?}"
            );
        }
        let routes = ProxyRoutes::resolve(&ProxySetting::None, true, &env);
        assert_eq!((routes.http, routes.https), (None, None));
        let routes = ProxyRoutes::resolve(&ProxySetting::Url("http://u:p@x:3".into()), true, &env);
        assert!(
            routes.no_proxy.starts_with(METADATA_HOSTS) && !routes.no_proxy.contains("localhost")
        );
        assert_eq!(redact("http://u:p@x:3"), "http://u:***@x:3");
    }
}

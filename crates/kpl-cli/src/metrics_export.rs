//! `--metrics-listen ADDR`: the producer's `kpl_*` metrics (the `metrics` facade) served as
//! Prometheus text on `http://ADDR/metrics` (any path answers) while the command runs.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Installs the Prometheus exporter as the global `metrics` recorder, listening on `listen`, if
/// given. Call before the producer is built: its counters register with the recorder then.
pub fn serve(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let Some(addr) = listen else {
        return Ok(());
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| {
            format!("--metrics-listen {addr}: cannot serve metrics there (is the port in use?)")
        })?;
    tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use kpl::UserRecord;
    use kpl::client::memory::MemoryKinesis;
    use kpl::client::{KinesisApi, StreamId};
    use kpl::producer::metrics::{MAX_SHARD_LABELS, SHARD_LABELS_FIRST_PICK};
    use kpl::producer::{Producer, ProducerConfig};
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// The `shard` labels of `name`'s series in a Prometheus text scrape.
    fn shard_labels(scrape: &str, name: &str) -> BTreeSet<String> {
        scrape
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.split("shard=\"").nth(1)?.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    /// A stream of 100 shards whose busiest 36 are the last ones the producer sees: the
    /// scrape labels those, not the first 64 seen (as it did before), and never more than 64.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_scrape_labels_the_busiest_shards_not_the_first_seen() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let scrape = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let memory = Arc::new(MemoryKinesis::new(100));
        let api: Arc<dyn KinesisApi> = memory.clone();
        let mut shards = kpl::client::list_all_shards(&*api, &StreamId::Name("s".into()))
            .await
            .unwrap();
        shards.sort_by_key(|s| s.hash_range.start);
        let config = ProducerConfig {
            rate_limit_enabled: false,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(api, "s", config).await.unwrap();
        let put = |shard: usize, bytes: usize| {
            UserRecord::new(format!("k{shard}"), vec![b'x'; bytes])
                .with_explicit_hash_key(shards[shard].hash_range.start)
        };
        // Every shard once, in order: the first 64 seen are shards 0..64.
        for shard in 0..100 {
            let stored = producer.send(put(shard, 10)).await.unwrap();
            producer.flush().await.unwrap();
            stored.await.unwrap();
        }
        // Then the load lands on shards 64..100.
        for _ in 0..2 {
            let mut stored = Vec::new();
            for shard in 64..100 {
                stored.push(producer.send(put(shard, 20_000)).await.unwrap());
            }
            producer.flush().await.unwrap();
            for record in stored {
                record.await.unwrap();
            }
            tokio::time::advance(SHARD_LABELS_FIRST_PICK).await;
        }
        let last = producer.send(put(99, 10)).await.unwrap();
        producer.flush().await.unwrap();
        last.await.unwrap();
        let text = scrape.render();
        let labels = shard_labels(&text, "kpl_shard_kinesis_records_data_put");
        for shard in &shards[64..100] {
            assert!(
                labels.contains(&shard.shard_id),
                "{} unlabelled:\n{text}",
                shard.shard_id
            );
        }
        assert!(labels.contains("other"));
        assert!(labels.len() <= MAX_SHARD_LABELS + 1, "{labels:?}");
        producer.shutdown().await.unwrap();
    }
}

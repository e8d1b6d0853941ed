//! `Sim::start` returns a simulator that is ready: the streams it was given exist, ACTIVE with
//! their shards, for the very first call; a stream the store refuses is an error, not a panic.

use kpl::client::StreamId;
use kpl::producer::{Producer, ProducerConfig};
use kpl_sim::{Sim, SimConfig, SimError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_of_the_config_exist_when_start_returns() {
    let sim = Sim::start(SimConfig {
        streams: vec![("first".into(), 3), ("second".into(), 1)],
        ..Default::default()
    })
    .await
    .unwrap();
    let summary = sim
        .api()
        .describe_stream_summary(&StreamId::Name("first".into()))
        .await
        .expect("the first call finds the stream");
    assert_eq!(summary.status, "ACTIVE");
    assert_eq!(summary.open_shard_count, 3);
    let producer = Producer::new(sim.api(), "second", ProducerConfig::default())
        .await
        .expect("a producer starts on the other stream at once");
    let receipt = producer
        .send(kpl::UserRecord::new("k", "v"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(receipt.shard_id.to_string(), "shardId-000000000000");
    producer
        .shutdown()
        .await
        .expect("the pipeline ran to the end");
    // More streams later, ACTIVE when create_stream returns.
    sim.create_stream("later", 2).await.unwrap();
    let later = sim
        .api()
        .describe_stream_summary(&StreamId::Name("later".into()))
        .await
        .unwrap();
    assert_eq!(
        (later.status.as_str(), later.open_shard_count),
        ("ACTIVE", 2)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_stream_the_store_refuses_fails_start_with_its_reason() {
    for (streams, code) in [
        (vec![("none".to_owned(), 0)], "ValidationException"),
        (vec![("bad name!".to_owned(), 1)], "ValidationException"),
        (
            vec![("twice".to_owned(), 1), ("twice".to_owned(), 1)],
            "ResourceInUseException",
        ),
    ] {
        let error = Sim::start(SimConfig {
            streams: streams.clone(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{streams:?} accepted"));
        match &error {
            SimError::CreateStream { code: c, .. } => assert_eq!(c, code, "{error}"),
            other => panic!("{streams:?}: {other}"),
        }
        assert!(
            error.to_string().starts_with("cannot create stream"),
            "{error}"
        );
    }
}

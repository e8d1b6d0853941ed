//! Flags shared by the subcommands: where Kinesis is, and the producer's knobs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kpl::client::sdk::{ConnectOptions, SdkKinesis};
use kpl::client::{ClientKind, KinesisApi};
use kpl::codec::deaggregate::Deaggregator;
use kpl::codec::frame::Dictionary;
use kpl::producer::config::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_OUTSTANDING_BYTES,
    DEFAULT_MAX_OUTSTANDING_RECORDS, DEFAULT_RATE_LIMIT_PERCENT, DEFAULT_ZSTD_LEVEL,
};
use kpl::producer::{Compression, ProducerConfig, ProducerError};
use kpl::spool::{
    DEFAULT_MAX_SPOOL_BYTES, DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES, SpoolConfig, SyncPolicy,
    WhenFull,
};

/// Where Kinesis is.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Kinesis endpoint URL [default: AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL, or the
    /// region's AWS endpoint]. A loopback endpoint with no credentials configured is signed with
    /// placeholder credentials.
    #[arg(long, value_name = "URL", value_parser = parse_endpoint_url)]
    pub endpoint_url: Option<String>,
    /// AWS region [default: AWS_REGION, the profile's, or us-east-1].
    #[arg(long)]
    pub region: Option<String>,
    /// Client for PutRecords: sdk (aws-sdk-kinesis) or lean (signed and sent from the SDK's
    /// parts without its per-call machinery; the other calls stay on the SDK).
    #[arg(long, value_name = "sdk|lean", default_value_t = ClientKind::default())]
    pub client: ClientKind,
    /// Proxy for every call, http://[user:password@]host:port [default: HTTPS_PROXY /
    /// HTTP_PROXY / ALL_PROXY, NO_PROXY]. Loopback endpoints bypass it.
    #[arg(long, value_name = "URL", conflicts_with = "no_proxy")]
    pub proxy: Option<String>,
    /// No proxy, whatever HTTPS_PROXY / HTTP_PROXY say.
    #[arg(long)]
    pub no_proxy: bool,
    /// Send loopback endpoints through the proxy too (to try a proxy against `kpl sim`).
    #[arg(long, conflicts_with = "no_proxy")]
    pub proxy_loopback: bool,
    /// PEM CA certificates to trust besides the platform's roots (a TLS-inspecting proxy, a
    /// private endpoint).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// The library's connect options for these flags (one loader for the CLI and
    /// `Producer::connect`: see `ConnectOptions`).
    pub fn options(&self, attempt_timeout: Duration) -> ConnectOptions {
        ConnectOptions {
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            attempt_timeout: Some(attempt_timeout),
            client: self.client,
            proxy: match (&self.proxy, self.no_proxy) {
                (Some(url), _) => kpl::client::http::ProxySetting::Url(url.clone()),
                (None, true) => kpl::client::http::ProxySetting::None,
                (None, false) => kpl::client::http::ProxySetting::FromEnv,
            },
            proxy_loopback: self.proxy_loopback,
            ca_file: self.ca_file.clone(),
        }
    }

    /// An SDK client with `attempt_timeout` per call.
    pub async fn sdk(&self, attempt_timeout: Duration) -> SdkKinesis {
        SdkKinesis::connect(self.options(attempt_timeout)).await
    }

    /// The client `--client` names, as a `KinesisApi`.
    pub async fn api(&self, attempt_timeout: Duration) -> Arc<dyn KinesisApi> {
        kpl::client::connect(self.options(attempt_timeout)).await
    }
}

/// The producer's knobs (see `ProducerConfig` for what each does).
#[derive(clap::Args, Debug, Clone)]
pub struct ProducerArgs {
    /// Send every line as its own Kinesis record (no KPL aggregation).
    #[arg(long)]
    pub no_aggregation: bool,
    /// Largest aggregate in bytes (20 of the default fill a shard's second).
    #[arg(long, value_name = "BYTES", default_value_t = kpl::producer::config::DEFAULT_AGGREGATION_MAX_SIZE_BYTES)]
    pub aggregation_max_size: usize,
    /// Compress Kinesis records: none, zstd, or zstd:LEVEL (only kpl readers decode it).
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Compress with this zstd dictionary (from `kpl dict train`; implies --compression zstd).
    /// Readers need it too: `kpl cat --zstd-dict FILE`.
    #[arg(long, value_name = "FILE")]
    pub zstd_dict: Option<PathBuf>,
    /// Tag every user record with a unique id (producer id + counter) so readers can drop
    /// duplicates (`kpl cat --dedup`).
    #[arg(long)]
    pub dedup_ids: bool,
    /// Store each shard's (so each key's) records in input order, even under throttling and
    /// retries: one Kinesis record per shard in flight (slower; see BENCHMARKS.md).
    #[arg(long)]
    pub strict_ordering: bool,
    /// Longest a record waits to be batched (e.g. 100ms, 1s).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub max_buffered_time: Duration,
    /// Per-shard rate in percent of 1000 records/s and 1 MiB/s.
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_RATE_LIMIT_PERCENT)]
    pub rate_limit: u32,
    /// Do not pace shards (only against an endpoint without shard limits).
    #[arg(long)]
    pub no_rate_limit: bool,
    /// Attempts per record, the first included.
    #[arg(long, default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// A record not stored within this time fails (e.g. 30s).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub record_ttl: Duration,
    /// Timeout of one PutRecords attempt (e.g. 6s).
    #[arg(long, value_name = "DURATION", default_value = "6s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Records accepted and not yet resolved before reading pauses.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTSTANDING_RECORDS)]
    pub max_outstanding_records: usize,
    /// Bytes accepted and not yet resolved before reading pauses.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_OUTSTANDING_BYTES)]
    pub max_outstanding_bytes: usize,
    /// PutRecords calls in flight at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,
    /// Serve the producer's metrics as Prometheus text on http://ADDR/metrics while running
    /// (e.g. 127.0.0.1:9464; 0.0.0.0:9464 to let other hosts scrape).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl ProducerArgs {
    /// The producer configuration, validated.
    pub fn config(&self) -> anyhow::Result<ProducerConfig> {
        let compression = match (&self.zstd_dict, &self.compression) {
            (None, c) => c.clone(),
            (Some(path), Compression::None) => Compression::ZstdDictionary {
                level: DEFAULT_ZSTD_LEVEL,
                dictionary: load_dictionary(path)?,
            },
            (Some(path), Compression::Zstd { level }) => Compression::ZstdDictionary {
                level: *level,
                dictionary: load_dictionary(path)?,
            },
            (Some(_), other) => anyhow::bail!("--zstd-dict does not combine with {other:?}"),
        };
        let config = ProducerConfig {
            aggregation_enabled: !self.no_aggregation,
            aggregation_max_size: self.aggregation_max_size,
            compression,
            dedup_ids: self.dedup_ids,
            strict_ordering: self.strict_ordering,
            record_max_buffered_time: self.max_buffered_time,
            rate_limit_percent: self.rate_limit,
            rate_limit_enabled: !self.no_rate_limit,
            max_attempts: self.max_attempts,
            record_ttl: self.record_ttl,
            request_timeout: self.request_timeout,
            max_outstanding_records: self.max_outstanding_records,
            max_outstanding_bytes: self.max_outstanding_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            ..ProducerConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// The disk spool (`--spool DIR`): see `kpl::spool`.
#[derive(clap::Args, Debug, Clone)]
pub struct SpoolArgs {
    /// Spool every line to this directory before sending it: a line counts as taken once it
    /// is on disk, and a restart of the same command (after a crash, a kill -9, a reboot) first
    /// sends what the spool still holds, then resumes each --file where it stopped. Failures
    /// for good go to DIR/dead-letters.jsonl with their reason.
    #[arg(long = "spool", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// When the spool syncs to disk: `every-record` (a machine crash loses nothing spooled),
    /// a DURATION such as `100ms` (a machine crash loses up to that much), or `never` (the OS
    /// decides). A crash of kpl alone loses nothing with any policy.
    #[arg(long, value_name = "POLICY", default_value = "100ms", value_parser = parse_sync_policy, requires = "dir")]
    pub spool_sync: SyncPolicy,
    /// Largest the spool grows, in bytes of records on disk.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_SPOOL_BYTES, requires = "dir")]
    pub spool_max_bytes: u64,
    /// What happens to lines when the spool is full: `block` (reading waits for Kinesis to
    /// catch up) or `refuse` (they fail at once, with reason SpoolFull, to --failed).
    #[arg(long, value_name = "block|refuse", default_value = "block", value_parser = parse_when_full, requires = "dir")]
    pub spool_when_full: WhenFull,
}

impl SpoolArgs {
    /// The spool's settings; segments are a quarter of the cap at most (16 MiB by default),
    /// so that a small cap still frees space as records are stored.
    pub fn config(&self) -> SpoolConfig {
        let segment_bytes =
            (self.spool_max_bytes / 4).clamp(MIN_SEGMENT_BYTES, DEFAULT_SEGMENT_BYTES);
        SpoolConfig {
            sync: self.spool_sync,
            max_bytes: self.spool_max_bytes,
            when_full: self.spool_when_full,
            segment_bytes,
        }
    }
}

/// `every-record` (or `every`), `never`, or a duration (`100ms`, also as `interval:100ms`):
/// one syntax for `kpl put` and `kpl bench`.
pub fn parse_sync_policy(s: &str) -> Result<SyncPolicy, String> {
    match s {
        "every-record" | "every" => Ok(SyncPolicy::EveryRecord),
        "never" => Ok(SyncPolicy::Never),
        _ => match parse_duration(s.strip_prefix("interval:").unwrap_or(s)) {
            Ok(d) if d.is_zero() => Ok(SyncPolicy::EveryRecord),
            Ok(d) => Ok(SyncPolicy::Interval(d)),
            Err(_) => Err(format!(
                "{s:?} is not a sync policy: use every-record, never, or a duration such as 100ms"
            )),
        },
    }
}

/// A sync policy as `--spool-sync` takes it (for summaries and reports).
pub fn sync_policy_name(policy: SyncPolicy) -> String {
    match policy {
        SyncPolicy::EveryRecord => "every-record".into(),
        SyncPolicy::Never => "never".into(),
        SyncPolicy::Interval(d) => format!("{}ms", d.as_millis()),
        _ => format!("{policy:?}"),
    }
}

/// `block` or `refuse`.
pub fn parse_when_full(s: &str) -> Result<WhenFull, String> {
    match s {
        "block" => Ok(WhenFull::Block),
        "refuse" => Ok(WhenFull::Refuse),
        _ => Err(format!("{s:?}: use block or refuse")),
    }
}

/// Reads a dictionary file written by `kpl dict train`.
pub fn load_dictionary(path: &Path) -> anyhow::Result<Dictionary> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the zstd dictionary {}", path.display()))?;
    Dictionary::from_bytes(bytes).with_context(|| format!("{}", path.display()))
}

/// How readers (`kpl cat`, `kpl decode`) decode records.
#[derive(clap::Args, Debug, Clone)]
pub struct DecodeArgs {
    /// A record with the KPL magic but a bad MD5 or protobuf is an error, not plain data.
    #[arg(long)]
    pub strict: bool,
    /// A zstd dictionary the writers used (repeat for several; each frame names its own).
    #[arg(long, value_name = "FILE")]
    pub zstd_dict: Vec<PathBuf>,
}

impl DecodeArgs {
    /// The deaggregator these flags describe.
    pub fn deaggregator(&self) -> anyhow::Result<Deaggregator> {
        let mut d = Deaggregator::new().strict(self.strict);
        for path in &self.zstd_dict {
            d = d.with_dictionary(&load_dictionary(path)?);
        }
        Ok(d)
    }
}

/// An endpoint is an http(s) URL: anything else would only fail later, as a credentials or
/// connection error that does not name the flag.
pub fn parse_endpoint_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(s.to_owned()),
        _ => Err(format!(
            "{s:?} is not an endpoint URL: use e.g. http://127.0.0.1:4567 or https://kinesis.us-east-1.amazonaws.com"
        )),
    }
}

/// `none`, `zstd` or `zstd:LEVEL`.
pub fn parse_compression(s: &str) -> Result<Compression, String> {
    match s.split_once(':') {
        None if s == "none" => Ok(Compression::None),
        None if s == "zstd" => Ok(Compression::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
        }),
        Some(("zstd", level)) => level
            .parse::<i32>()
            .ok()
            .filter(|l| (1..=22).contains(l))
            .map(|level| Compression::Zstd { level })
            .ok_or_else(|| format!("zstd level {level:?} must be 1 to 22")),
        _ => Err(format!("{s:?}: use none, zstd or zstd:LEVEL")),
    }
}

/// `250ms`, `2s`, `1.5s`, `3m`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 250ms, 2s or 1m"))?;
    let secs = match unit {
        "" | "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Reports a producer that could not start and returns exit code 2.
pub fn exit_for_producer_error(error: &ProducerError) -> ExitCode {
    eprintln!("kpl: {error}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_compression_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("100"), Ok(Duration::from_millis(100)));
        assert!(parse_duration("2 parsecs").is_err());
        assert_eq!(
            parse_compression("zstd:3"),
            Ok(Compression::Zstd { level: 3 })
        );
        assert!(parse_compression("zstd:30").is_err());
        assert!(parse_compression("gzip").is_err());
    }
}

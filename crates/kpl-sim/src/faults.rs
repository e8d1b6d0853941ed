//! What the fault layer injects, and the seeded decisions that make it repeatable.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// An error code given to a share of PutRecords entries. The chosen entries are removed from
/// the request before it reaches the store, so a failed entry was really not stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryFault {
    /// e.g. `ProvisionedThroughputExceededException`, `InternalFailure`, `KMSThrottlingException`.
    pub code: String,
    /// Share of entries, 0.0 to 1.0.
    pub probability: f64,
}

/// A whole request answered with an error (nothing stored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestFault {
    /// e.g. `AccessDeniedException` (400), `ResourceNotFoundException` (400),
    /// `KMSAccessDeniedException` (400), `InternalFailure` (500), `ServiceUnavailable` (503).
    pub code: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// Share of requests, 0.0 to 1.0.
    pub probability: f64,
}

/// A reshard the simulator performs by itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reshard {
    /// Milliseconds after the faults were set.
    pub at_ms: u64,
    /// `split` (the stream's first open shard, at the middle of its range) or `merge` (its
    /// first two adjacent open shards).
    pub kind: String,
}

/// Faults to inject. `Default` injects none. Probabilities apply per request (or per entry for
/// `entry_failures`) to PutRecords and PutRecord calls of the targeted stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Only requests naming this stream are affected (`None`: all streams).
    pub stream: Option<String>,
    /// Per-entry failures, removed from the request before the store sees it.
    pub entry_failures: Vec<EntryFault>,
    /// Whole-request errors.
    pub request_errors: Vec<RequestFault>,
    /// Added to every targeted request before it is handled, in ms.
    pub latency_ms: u64,
    /// Share of requests that hang for `hang_ms` before an answer, without being stored.
    pub hang_probability: f64,
    /// Share of requests that are stored and whose answer then hangs for `hang_ms`: the client
    /// times out although the records are in the stream (the honest source of duplicates).
    pub lost_response_probability: f64,
    /// How long a hang lasts, in ms (longer than the client's attempt timeout).
    pub hang_ms: u64,
    /// Share of new connections closed at once, before any answer. While it is above 0, every
    /// answer carries `Connection: close`, so each request opens a new connection.
    pub reset_probability: f64,
    /// The endpoint drops every connection from `down_from_ms` to `down_until_ms` after the
    /// faults were set.
    pub down_from_ms: Option<u64>,
    /// End of the down period.
    pub down_until_ms: Option<u64>,
    /// A split or merge at a given time.
    pub reshard: Option<Reshard>,
    /// Stop injecting after this many faults (`None`: no limit).
    pub max_faults: Option<u64>,
}

/// What the fault layer saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every Kinesis request.
    pub requests: u64,
    /// PutRecords / PutRecord requests.
    pub put_requests: u64,
    /// Entries in those requests.
    pub entries_seen: u64,
    /// Entries passed on to the store.
    pub entries_forwarded: u64,
    /// Entries failed by the fault layer, by code.
    pub entries_failed: BTreeMap<String, u64>,
    /// Requests answered with an injected error, by code.
    pub request_errors: BTreeMap<String, u64>,
    /// Requests hung without being stored.
    pub hangs: u64,
    /// Requests stored whose answer was lost.
    pub lost_responses: u64,
    /// Connections closed at once (resets and the down period).
    pub dropped_connections: u64,
    /// Reshards performed.
    pub reshards: u64,
    /// Entries refused by the shard write limits (not faults).
    pub limit_throttled: u64,
    /// TLS handshakes that failed or timed out (with [`SimConfig::tls`](crate::SimConfig::tls)):
    /// a client that does not trust the certificate, or that speaks plain HTTP.
    #[serde(default)]
    pub tls_handshake_failures: u64,
}

/// One line for people: `21 requests, 6 PutRecords of 222 entries (222 stored), 0 throttled by
/// the shard limits`, then only the faults and events that happened (`; 3 hangs; 1 reshards`).
impl std::fmt::Display for SimStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} PutRecords of {} entries ({} stored), {} throttled by the shard limits",
            self.requests,
            self.put_requests,
            self.entries_seen,
            self.entries_forwarded,
            self.limit_throttled
        )?;
        let by_code = |counts: &BTreeMap<String, u64>| {
            counts
                .iter()
                .map(|(code, n)| format!("{n} {code}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut fired = Vec::new();
        if !self.entries_failed.is_empty() {
            fired.push(format!("entries failed: {}", by_code(&self.entries_failed)));
        }
        if !self.request_errors.is_empty() {
            fired.push(format!(
                "requests failed: {}",
                by_code(&self.request_errors)
            ));
        }
        for (n, what) in [
            (self.hangs, "hangs"),
            (self.lost_responses, "lost answers"),
            (self.dropped_connections, "dropped connections"),
            (self.reshards, "reshards"),
            (self.tls_handshake_failures, "failed TLS handshakes"),
        ] {
            if n > 0 {
                fired.push(format!("{n} {what}"));
            }
        }
        if !fired.is_empty() {
            write!(f, "; {}", fired.join("; "))?;
        }
        Ok(())
    }
}

/// What to do with one request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Decision {
    Pass,
    Error(RequestFault),
    Hang,
    LoseResponse,
}

/// The live fault configuration with its generator and counters.
pub(crate) struct FaultState {
    pub faults: Faults,
    pub stats: SimStats,
    pub set_at: std::time::Instant,
    rng: SmallRng,
    injected: u64,
}

impl FaultState {
    pub fn new(faults: Faults, seed: u64) -> Self {
        FaultState {
            faults,
            stats: SimStats::default(),
            set_at: std::time::Instant::now(),
            rng: SmallRng::seed_from_u64(seed),
            injected: 0,
        }
    }

    pub fn replace(&mut self, faults: Faults) {
        self.faults = faults;
        self.set_at = std::time::Instant::now();
        self.injected = 0;
    }

    fn budget_left(&self) -> bool {
        self.faults.max_faults.is_none_or(|m| self.injected < m)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.budget_left() && self.rng.random_bool(p.min(1.0)) && {
            self.injected += 1;
            true
        }
    }

    pub fn targets(&self, stream: Option<&str>) -> bool {
        match (&self.faults.stream, stream) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got || got.ends_with(&format!("/{want}")),
            (Some(_), None) => false,
        }
    }

    /// The fate of one targeted put request.
    pub fn decide_request(&mut self) -> Decision {
        for fault in self.faults.request_errors.clone() {
            if self.chance(fault.probability) {
                *self
                    .stats
                    .request_errors
                    .entry(fault.code.clone())
                    .or_default() += 1;
                return Decision::Error(fault);
            }
        }
        if self.chance(self.faults.hang_probability) {
            self.stats.hangs += 1;
            return Decision::Hang;
        }
        if self.chance(self.faults.lost_response_probability) {
            self.stats.lost_responses += 1;
            return Decision::LoseResponse;
        }
        Decision::Pass
    }

    /// The injected error code of each of `n` entries (`None`: pass it on).
    pub fn decide_entries(&mut self, n: usize) -> Vec<Option<String>> {
        let faults = self.faults.entry_failures.clone();
        (0..n)
            .map(|_| {
                for f in &faults {
                    if self.chance(f.probability) {
                        *self.stats.entries_failed.entry(f.code.clone()).or_default() += 1;
                        return Some(f.code.clone());
                    }
                }
                None
            })
            .collect()
    }

    /// Whether the endpoint is in its down period now.
    pub fn is_down(&self) -> bool {
        let elapsed = self.set_at.elapsed().as_millis() as u64;
        match (self.faults.down_from_ms, self.faults.down_until_ms) {
            (Some(from), until) => elapsed >= from && until.is_none_or(|u| elapsed < u),
            (None, Some(until)) => elapsed < until,
            (None, None) => false,
        }
    }

    /// Whether a new connection is dropped at once.
    pub fn drop_connection(&mut self) -> bool {
        let drop = self.is_down() || self.chance(self.faults.reset_probability);
        if drop {
            self.stats.dropped_connections += 1;
        }
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::SimStats;

    #[test]
    fn stats_read_as_one_line_naming_only_what_happened() {
        let quiet = SimStats {
            requests: 21,
            put_requests: 6,
            entries_seen: 222,
            entries_forwarded: 222,
            ..SimStats::default()
        };
        assert_eq!(
            quiet.to_string(),
            "21 requests, 6 PutRecords of 222 entries (222 stored), 0 throttled by the shard limits"
        );
        let faulty = SimStats {
            entries_failed: [("InternalFailure".to_owned(), 4)].into_iter().collect(),
            hangs: 2,
            reshards: 1,
            ..quiet
        };
        assert_eq!(
            faulty.to_string(),
            "21 requests, 6 PutRecords of 222 entries (222 stored), 0 throttled by the shard \
             limits; entries failed: 4 InternalFailure; 2 hangs; 1 reshards"
        );
    }
    use super::*;

    #[test]
    fn decisions_repeat_under_a_seed() {
        let faults = Faults {
            entry_failures: vec![EntryFault {
                code: "InternalFailure".into(),
                probability: 0.3,
            }],
            ..Default::default()
        };
        let a = FaultState::new(faults.clone(), 42).decide_entries(1000);
        let b = FaultState::new(faults, 42).decide_entries(1000);
        assert_eq!(a, b);
        let failed = a.iter().filter(|c| c.is_some()).count();
        assert!((250..350).contains(&failed), "{failed}");
    }

    #[test]
    fn max_faults_caps_injection() {
        let mut s = FaultState::new(
            Faults {
                entry_failures: vec![EntryFault {
                    code: "X".into(),
                    probability: 1.0,
                }],
                max_faults: Some(3),
                ..Default::default()
            },
            1,
        );
        let failed = s.decide_entries(10).iter().filter(|c| c.is_some()).count();
        assert_eq!(failed, 3);
    }
}

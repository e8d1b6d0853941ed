//! The spool as its users see it: what goes in comes back, in order, until acknowledged;
//! acknowledged space is given back; a crash, a torn or corrupt file loses only what it must,
//! with a warning and never a panic.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::task::Poll;

use kpl::dedup::DedupId;
use kpl::spool::{
    DEAD_LETTER_FILE, ProblemKind, Spool, SpoolConfig, SpoolEntry, SpoolError, SpoolId, SyncPolicy,
    WhenFull,
};
use kpl::{HashKey, UserRecord};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn small(segment_bytes: u64, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        sync: SyncPolicy::Never,
        max_bytes,
        when_full: WhenFull::Block,
        segment_bytes,
    }
}

fn record(i: u64, data_len: usize) -> UserRecord {
    let mut data = format!("record-{i}-").into_bytes();
    data.resize(data_len.max(data.len()), b'.');
    UserRecord::new(format!("key-{i}"), data)
}

fn read_all(spool: &Spool) -> Vec<SpoolEntry> {
    let mut cursor = spool.cursor();
    let mut out = Vec::new();
    while let Some(e) = cursor.next_entry().unwrap() {
        out.push(e);
    }
    out
}

fn ids(entries: &[SpoolEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.id.0).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// Byte offsets where the frames of a segment file start, and its length.
fn frame_starts(path: &Path) -> (Vec<u64>, u64) {
    let bytes = std::fs::read(path).unwrap();
    let mut starts = Vec::new();
    let mut at = 16usize;
    while at + 8 <= bytes.len() {
        starts.push(at as u64);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    (starts, bytes.len() as u64)
}

/// Polls `fut` once: `true` if it is still pending.
async fn pending<F: Future>(fut: std::pin::Pin<&mut F>) -> bool {
    let mut fut = fut;
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
}

#[tokio::test]
async fn what_is_appended_comes_back_in_order_with_keys_and_dedup_ids() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    let mut expected = Vec::new();
    for i in 0..100u64 {
        let mut r = record(i, 50);
        if i % 3 == 0 {
            r = r.with_explicit_hash_key(HashKey(u128::MAX - u128::from(i)));
        }
        let dedup = (i % 2 == 0).then_some(DedupId {
            producer: 0xabc,
            seq: i,
        });
        let id = spool.append(r.clone(), dedup).await.unwrap();
        assert_eq!(id, SpoolId(i));
        expected.push(SpoolEntry {
            id,
            record: r,
            dedup_id: dedup,
        });
    }
    let batch = spool
        .append_batch(vec![(record(100, 0), None), (record(101, 0), None)])
        .await
        .unwrap();
    assert_eq!(batch, SpoolId(100)..SpoolId(102));
    let got = read_all(&spool);
    assert_eq!(&got[..100], &expected[..]);
    assert_eq!(ids(&got[100..]), [100, 101]);
    assert_eq!(spool.stats().entries, 102);
}

#[tokio::test]
async fn acks_out_of_order_delete_each_segment_once_all_of_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
    // ~520-byte frames: 7 per 4 KiB segment.
    for i in 0..70 {
        spool.append(record(i, 500), None).await.unwrap();
    }
    spool.sync().await.unwrap();
    let before = segment_files(dir.path()).len();
    assert_eq!(before, 10);
    // Acknowledge everything but id 3 and the last segment, in reverse order.
    let mut rng = SmallRng::seed_from_u64(7);
    let mut to_ack: Vec<u64> = (0..63).filter(|&i| i != 3).collect();
    for i in (1..to_ack.len()).rev() {
        to_ack.swap(i, rng.random_range(0..=i));
    }
    spool.ack_many(to_ack.iter().map(|&i| SpoolId(i)));
    spool.sync().await.unwrap();
    // Segment 0 (ids 0..7) is pinned by id 3; 1..9 are gone; the last one is still active.
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(ids(&read_all(&spool)), [3, 63, 64, 65, 66, 67, 68, 69]);
    spool.ack(SpoolId(3));
    spool.ack(SpoolId(3)); // repeated and unknown ids are ignored
    spool.ack(SpoolId(1_000));
    spool.sync().await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(spool.stats().entries, 7);
}

#[tokio::test]
async fn reopening_resends_exactly_the_unacknowledged_entries_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
        for i in 0..50 {
            let dedup = Some(DedupId {
                producer: 9,
                seq: i,
            });
            spool.append(record(i, 200), dedup).await.unwrap();
        }
        spool.ack_many((0..50).filter(|i| i % 2 == 1).map(SpoolId));
        // Dropped without sync: closing flushes what was sent.
    }
    let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
    assert_eq!(spool.recovery().entries, 25);
    assert!(spool.recovery().problems.is_empty());
    let got = read_all(&spool);
    assert_eq!(ids(&got), (0..50).step_by(2).collect::<Vec<_>>());
    for e in &got {
        assert_eq!(e.record, record(e.id.0, 200));
        assert_eq!(
            e.dedup_id,
            Some(DedupId {
                producer: 9,
                seq: e.id.0
            })
        );
    }
    // New ids continue after the old ones, never reusing one.
    assert_eq!(
        spool.append(record(99, 10), None).await.unwrap(),
        SpoolId(50)
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    let err = Spool::open(dir.path(), SpoolConfig::default()).unwrap_err();
    assert!(matches!(err, SpoolError::Locked(_)), "{err}");
    assert!(err.to_string().contains("in use by another process"));
}

/// Writes 12 small records in one segment, closes, and returns the segment's path.
async fn one_closed_segment(dir: &Path) -> PathBuf {
    let spool = Spool::open(dir, SpoolConfig::default()).unwrap();
    spool.checkpoint("src", b"after-5".to_vec()).unwrap();
    for i in 0..12 {
        spool.append(record(i, 20), None).await.unwrap();
    }
    drop(spool);
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

#[tokio::test]
async fn a_torn_tail_at_any_byte_recovers_every_whole_frame_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let seg = one_closed_segment(dir.path()).await;
    let original = std::fs::read(&seg).unwrap();
    let (starts, len) = frame_starts(&seg);
    // Frames: the checkpoint, then 12 records. Cut inside and between the last 3 records.
    let first_cut = starts[starts.len() - 3];
    for cut in first_cut..len {
        let case = tempfile::tempdir().unwrap();
        let name = seg.file_name().unwrap();
        std::fs::write(case.path().join(name), &original[..cut as usize]).unwrap();
        let spool = Spool::open(case.path(), SpoolConfig::default()).unwrap();
        let whole = starts.iter().filter(|&&s| s < cut).count() as u64 - 1; // minus checkpoint
        let whole = if starts.contains(&cut) {
            whole
        } else {
            whole - 1
        };
        assert_eq!(
            ids(&read_all(&spool)),
            (0..whole).collect::<Vec<_>>(),
            "cut at {cut}"
        );
        let problems = &spool.recovery().problems;
        if starts.contains(&cut) {
            assert!(
                problems.is_empty(),
                "cut at a frame boundary {cut}: {problems:?}"
            );
        } else {
            assert_eq!(problems.len(), 1, "cut at {cut}");
            assert_eq!(problems[0].kind, ProblemKind::TornTail);
            assert_eq!(problems[0].offset, starts[whole as usize + 1]);
        }
        assert_eq!(
            spool.checkpoint_value("src").as_deref(),
            Some(&b"after-5"[..])
        );
    }
}

#[tokio::test]
async fn a_corrupt_byte_mid_segment_skips_the_rest_of_that_segment_only() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
        for i in 0..21 {
            spool.append(record(i, 500), None).await.unwrap();
        }
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3); // ids 0..7, 7..14, 14..21
    let (starts, _) = frame_starts(&files[1]);
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[starts[2] as usize + 100] ^= 0x40; // inside record 9's data
    std::fs::write(&files[1], &bytes).unwrap();
    let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
    let expected: Vec<u64> = (0..9).chain(14..21).collect();
    assert_eq!(ids(&read_all(&spool)), expected);
    let problems = &spool.recovery().problems;
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, files[1]);
    assert_eq!(problems[0].offset, starts[2]);
    assert!(matches!(
        problems[0].kind,
        ProblemKind::Corrupt("CRC mismatch")
    ));
    assert_eq!(problems[0].skipped_bytes, bytes.len() as u64 - starts[2]);
}

/// Appends ~1 KiB records until the next would not fit `cap`; returns how many.
async fn fill(spool: &Spool, cap: u64) -> u64 {
    let mut n = 0;
    while spool.stats().bytes + 1100 <= cap {
        spool.append(record(n, 1024), None).await.unwrap();
        n += 1;
    }
    n
}

#[tokio::test]
async fn a_full_spool_blocks_an_append_until_an_ack_frees_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * 1024;
    let spool = Spool::open(dir.path(), small(8192, cap)).unwrap();
    let n = fill(&spool, cap).await;
    let blocked = spool.append(record(n, 1024), None);
    tokio::pin!(blocked);
    assert!(pending(blocked.as_mut()).await, "the append waits for room");
    spool.sync().await.unwrap();
    assert!(
        pending(blocked.as_mut()).await,
        "still waiting: nothing was acknowledged"
    );
    // Acknowledging the first segment's records gives its bytes back.
    spool.ack_many((0..7).map(SpoolId));
    let id = blocked.await.unwrap();
    assert_eq!(id, SpoolId(n));
    assert_eq!(read_all(&spool).first().unwrap().id, SpoolId(7));
}

#[tokio::test]
async fn a_full_spool_whose_active_segment_is_acknowledged_frees_it_for_a_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * 1024;
    let spool = Spool::open(dir.path(), small(8192, cap)).unwrap();
    let n = fill(&spool, cap).await;
    // Everything is acknowledged, but the last segment is still the one being written.
    spool.ack_many((0..n).map(SpoolId));
    spool.sync().await.unwrap();
    assert!(spool.stats().bytes > 0);
    // A waiting append makes the writer start a new segment so the acknowledged one can go.
    let id = spool.append(record(n, 15_500), None).await.unwrap();
    assert_eq!(id, SpoolId(n));
    assert_eq!(ids(&read_all(&spool)), [n]);
}

#[tokio::test]
async fn a_full_spool_with_refuse_fails_at_once_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 * 1024;
    let config = SpoolConfig {
        when_full: WhenFull::Refuse,
        ..small(8192, cap)
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let n = fill(&spool, cap).await;
    let err = spool.append(record(n, 1024), None).await.unwrap_err();
    assert!(matches!(err, SpoolError::Full { max_bytes, .. } if max_bytes == cap));
    assert!(err.to_string().contains("the spool is full"), "{err}");
    // Larger than the whole cap: refused whatever the policy.
    let err = spool.append(record(0, 20_000), None).await.unwrap_err();
    assert!(matches!(err, SpoolError::Unstorable(_)), "{err}");
    spool.ack_many((0..7).map(SpoolId));
    spool.sync().await.unwrap();
    spool.append(record(n, 1024), None).await.unwrap();
}

#[tokio::test]
async fn a_failed_record_goes_to_the_dead_letter_file_with_its_reason_and_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
        for i in 0..3 {
            let dedup = Some(DedupId {
                producer: 1,
                seq: i,
            });
            spool.append(record(i, 10), dedup).await.unwrap();
        }
        spool.fail(SpoolId(1), "ResourceNotFoundException: stream gone");
        spool.fail(SpoolId(77), "not in the spool: ignored");
        spool.sync().await.unwrap();
        assert_eq!(ids(&read_all(&spool)), [0, 2]);
    }
    let text = std::fs::read_to_string(dir.path().join(DEAD_LETTER_FILE)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["spool_id"], 1);
    assert_eq!(v["partition_key"], "key-1");
    assert_eq!(v["reason"], "ResourceNotFoundException: stream gone");
    assert_eq!(v["dedup_id"], "00000000000000011");
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(v["data_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, record(1, 10).data);
    let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    assert_eq!(ids(&read_all(&spool)), [0, 2]);
}

#[tokio::test]
async fn checkpoints_survive_reopen_and_the_deletion_of_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
        spool.checkpoint("file:/a", b"0".to_vec()).unwrap();
        spool.append(record(0, 10), None).await.unwrap();
        spool.checkpoint("file:/a", b"1".to_vec()).unwrap();
        spool.checkpoint("file:/b", b"7".to_vec()).unwrap();
        // Fill more segments, then acknowledge all: the checkpoints' segment is deleted.
        for i in 1..30 {
            spool.append(record(i, 500), None).await.unwrap();
        }
        spool.ack_many((0..30).map(SpoolId));
        spool.sync().await.unwrap();
        assert!(segment_files(dir.path()).len() <= 2);
        assert_eq!(
            spool.checkpoint_value("file:/a").as_deref(),
            Some(&b"1"[..])
        );
    }
    let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
    let cps = spool.checkpoints();
    assert_eq!(cps.len(), 2);
    assert_eq!(cps["file:/a"], b"1");
    assert_eq!(cps["file:/b"], b"7");
    assert!(read_all(&spool).is_empty());
}

#[tokio::test]
async fn a_reader_sends_recovered_entries_first_then_new_ones_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
        for i in 0..10 {
            spool.append(record(i, 100), None).await.unwrap();
        }
    }
    let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
    let mut reader = spool.reader(4, 1 << 20);
    let mut got = Vec::new();
    while got.len() < 10 {
        let batch = reader.recv().await.unwrap().unwrap();
        assert!(batch.len() <= 4);
        got.extend(ids(&batch));
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    spool.append(record(10, 100), None).await.unwrap();
    let batch = reader.recv().await.unwrap().unwrap();
    assert_eq!(ids(&batch), [10]);
}

const CHILD_ENV: &str = "KPL_SPOOL_CRASH_CHILD";
const CRASH_TEST: &str = "a_writer_killed_at_random_moments_loses_no_synced_record";

/// Each round starts a child process (this test binary, re-run) that opens the spool with
/// `SyncPolicy::EveryRecord`, acknowledges some recovered entries, and appends records,
/// printing each id once `append` returned; it is SIGKILLed after a random number of lines.
/// Then the spool is opened here: every id the child reported and did not acknowledge must come
/// back with its data, nothing returned may be corrupt, and ids must increase.
#[test]
fn a_writer_killed_at_random_moments_loses_no_synced_record() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        crash_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(19);
    let mut synced: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut acked: HashSet<u64> = HashSet::new();
    let mut kills = 0;
    for round in 0..30 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("KPL_SPOOL_CRASH_SEED", rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stop_after = rng.random_range(1..60);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let mut killed = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("synced"), Some(id), Some(data)) => {
                    synced.insert(id.parse().unwrap(), data.as_bytes().to_vec());
                }
                (Some("acked"), Some(id), None) => {
                    acked.insert(id.parse().unwrap());
                }
                _ => continue,
            }
            seen += 1;
            if seen == stop_after {
                let status = Command::new("kill")
                    .args(["-KILL", &child.id().to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
                killed = true;
                break;
            }
        }
        // Lines printed before the kill are still in the pipe: each was synced.
        for line in lines {
            let Ok(line) = line else { break };
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("synced"), Some(id), Some(data)) => {
                    synced.insert(id.parse().unwrap(), data.as_bytes().to_vec());
                }
                (Some("acked"), Some(id), None) => {
                    acked.insert(id.parse().unwrap());
                }
                _ => {}
            }
        }
        child.wait().unwrap();
        assert!(killed, "the child ended before it was killed");
        kills += 1;

        let spool = Spool::open(dir.path(), crash_config()).unwrap();
        let got = read_all(&spool);
        let mut last = None;
        let present: HashSet<u64> = got.iter().map(|e| e.id.0).collect();
        for e in &got {
            assert!(last < Some(e.id.0), "ids increase");
            last = Some(e.id.0);
            assert!(well_formed(&e.record.data), "corrupt data for id {}", e.id);
            if let Some(data) = synced.get(&e.id.0) {
                assert_eq!(&e.record.data[..], &data[..], "id {}", e.id);
            }
        }
        for (id, _) in synced.iter().filter(|(id, _)| !acked.contains(id)) {
            assert!(
                present.contains(id),
                "round {round}: id {id} was synced, not acknowledged, and is lost; recovered {:?}",
                ids(&got)
            );
        }
    }
    assert_eq!(kills, 30);
    assert!(synced.len() > 30, "the children appended: {}", synced.len());
}

fn crash_config() -> SpoolConfig {
    SpoolConfig {
        sync: SyncPolicy::EveryRecord,
        ..small(8192, 64 << 20)
    }
}

/// `len:` then `len` bytes of a letter.
fn well_formed(data: &[u8]) -> bool {
    let text = std::str::from_utf8(data).unwrap_or("");
    let Some((len, rest)) = text.split_once(':') else {
        return false;
    };
    len.parse::<usize>().ok() == Some(rest.len()) && rest.bytes().all(|b| b == rest.as_bytes()[0])
}

fn crash_child(dir: &Path) {
    use std::io::Write;
    let seed = std::env::var("KPL_SPOOL_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let spool = Spool::open(dir, crash_config()).unwrap();
    let mut out = std::io::stdout().lock();
    // libtest has printed "test NAME ... " without a newline: end that line first.
    writeln!(out).unwrap();
    // Resend: acknowledge a random half of what an earlier child left.
    for e in read_all(&spool) {
        if rng.random_bool(0.5) {
            // Said before it is done: the parent must count it as possibly acknowledged.
            writeln!(out, "acked {}", e.id).unwrap();
            out.flush().unwrap();
            spool.ack(e.id);
        }
    }
    let mut mine = Vec::new();
    for k in 0..100_000u64 {
        let len = rng.random_range(1..600);
        let letter = b'a' + (k % 26) as u8;
        let data = format!("{len}:{}", (letter as char).to_string().repeat(len));
        let id = rt
            .block_on(spool.append(UserRecord::new("k", data.clone()), None))
            .unwrap();
        writeln!(out, "synced {id} {data}").unwrap();
        out.flush().unwrap();
        mine.push(id);
        if rng.random_bool(0.3) {
            let at = rng.random_range(0..mine.len());
            let id = mine.swap_remove(at);
            writeln!(out, "acked {id}").unwrap();
            out.flush().unwrap();
            spool.ack(id);
        }
        if k % 16 == 0 {
            spool.checkpoint("child", k.to_le_bytes().to_vec()).unwrap();
        }
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_segment_is_left_alone_and_its_name_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("00000000000000000005.seg");
    std::fs::write(&foreign, b"not a kpl spool segment at all").unwrap();
    let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    let problems = &spool.recovery().problems;
    assert_eq!(problems.len(), 1);
    assert!(matches!(problems[0].kind, ProblemKind::BadHeader(_)));
    let id = spool.append(record(0, 10), None).await.unwrap();
    assert!(id.0 > 5, "{id}");
    drop(spool);
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"not a kpl spool segment at all"
    );
}

#[tokio::test]
async fn a_torn_ack_file_keeps_its_whole_acks_and_takes_new_ones_after_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
        for i in 0..4 {
            spool.append(record(i, 10), None).await.unwrap();
        }
        spool.ack(SpoolId(0));
    }
    let acks = dir.path().join("00000000000000000000.acks");
    let mut torn = std::fs::read(&acks).unwrap();
    torn.extend_from_slice(&[9, 0, 0]); // half a frame header
    std::fs::write(&acks, &torn).unwrap();
    {
        let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
        let problems = &spool.recovery().problems;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, acks);
        assert_eq!(problems[0].kind, ProblemKind::TornTail);
        assert_eq!(ids(&read_all(&spool)), [1, 2, 3]);
        spool.ack(SpoolId(2));
    }
    let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    assert!(spool.recovery().problems.is_empty());
    assert_eq!(ids(&read_all(&spool)), [1, 3]);
}

/// Records and the checkpoint that covers them go in one operation: once the append returns,
/// both are in the log, and a tear anywhere in that write leaves the checkpoint only with every
/// record it covers.
#[tokio::test]
async fn an_append_with_checkpoints_stores_them_after_its_records_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
        let batch = |from: u64| (from..from + 3).map(|i| (record(i, 20), None)).collect();
        let ids = spool
            .append_batch_with_checkpoints(batch(0), vec![("src".into(), b"3".to_vec())])
            .await
            .unwrap();
        assert_eq!(ids, SpoolId(0)..SpoolId(3));
        assert_eq!(spool.checkpoint_value("src").as_deref(), Some(&b"3"[..]));
        spool
            .append_batch_with_checkpoints(batch(3), vec![("src".into(), b"6".to_vec())])
            .await
            .unwrap();
        let long_key = "k".repeat(kpl::spool::MAX_CHECKPOINT_KEY_BYTES + 1);
        assert!(matches!(
            spool
                .append_batch_with_checkpoints(batch(6), vec![(long_key, Vec::new())])
                .await,
            Err(SpoolError::Unstorable(_))
        ));
    }
    let seg = segment_files(dir.path()).remove(0);
    let original = std::fs::read(&seg).unwrap();
    let (starts, len) = frame_starts(&seg);
    // Frames: 3 records, checkpoint "3", 3 records, checkpoint "6".
    assert_eq!(starts.len(), 8);
    for cut in starts[4]..=len {
        let case = tempfile::tempdir().unwrap();
        std::fs::write(
            case.path().join(seg.file_name().unwrap()),
            &original[..cut as usize],
        )
        .unwrap();
        let spool = Spool::open(case.path(), SpoolConfig::default()).unwrap();
        let records = read_all(&spool).len();
        let expected: &[u8] = if cut == len { b"6" } else { b"3" };
        assert_eq!(
            spool.checkpoint_value("src").as_deref(),
            Some(expected),
            "cut at {cut}"
        );
        assert!(records >= 3 && (cut < len || records == 6), "cut at {cut}");
    }
}

/// A batch that fits a segment starts a new one rather than straddling two: the rotation
/// between them (syncs, a new file) would leave a crash window in which its first records
/// are kept without the checkpoint that covers them.
#[tokio::test]
async fn a_batch_with_checkpoints_that_fits_a_segment_is_not_split_across_two() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), small(4096, 1 << 20)).unwrap();
    spool.append(record(0, 3000), None).await.unwrap();
    let batch = (1..11).map(|i| (record(i, 100), None)).collect();
    let ids = spool
        .append_batch_with_checkpoints(batch, vec![("src".into(), b"11".to_vec())])
        .await
        .unwrap();
    drop(spool);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let second: u64 = files[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(second, ids.start.0, "the batch starts the second segment");
}

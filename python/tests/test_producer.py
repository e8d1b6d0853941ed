"""The asyncio producer against `kpl sim`: receipts, batches, failures, backpressure, close."""
import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import kpl
from conftest import KPL, kpl_cat

FAST = dict(record_max_buffered_time=0.01)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_send_resolves_to_a_receipt_and_the_record_reads_back(sim):
    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, **FAST) as producer:
            first = await producer.send("user-1", b"bytes data")
            second = await producer.send("user-2", "text data \u00e9")
            low = await producer.send("k", b"low", explicit_hash_key="0")
            high = await producer.send("k", b"high", explicit_hash_key=str(2**128 - 1))
            receipts = [await f for f in (first, second, low, high)]
            metrics = producer.metrics()
        return receipts, metrics

    receipts, metrics = run(main())
    for r in receipts:
        assert isinstance(r, kpl.Receipt)
        assert r.shard_id.startswith("shardId-")
        assert r.sequence_number.isdigit()
        assert r.sub_sequence_number >= 0 and r.attempts == 1
    assert receipts[2].shard_id == "shardId-000000000000"
    assert receipts[3].shard_id == "shardId-000000000001"
    assert metrics["user_records_put"] == 4 and metrics["put_records_calls"] >= 1
    assert set(metrics["shards"]) <= {"shardId-000000000000", "shardId-000000000001"}
    back = {(r["partition_key"], r["data"]) for r in kpl_cat(sim.endpoint, "s", 4)}
    assert back == {("user-1", b"bytes data"), ("user-2", "text data \u00e9".encode()),
                    ("k", b"low"), ("k", b"high")}


def test_send_batch_resolves_to_one_outcome_per_record_in_order(sim):
    records = [(f"key-{i % 37}", f"line {i}".encode()) for i in range(1200)]

    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, **FAST) as producer:
            futures = [await producer.send_batch(records[i:i + 500]) for i in range(0, 1200, 500)]
            ehk = await (await producer.send_batch([("k", b"routed", "0")]))
            return [o for f in futures for o in await f], ehk

    outcomes, ehk = run(main())
    assert len(outcomes) == 1200
    assert all(isinstance(o, kpl.Receipt) for o in outcomes)
    assert ehk[0].shard_id == "shardId-000000000000"
    # Records of one key in one batch share a Kinesis record in send order.
    by_key = {}
    for (key, _), o in zip(records, outcomes):
        by_key.setdefault((key, o.sequence_number), []).append(o.sub_sequence_number)
    assert all(subs == sorted(subs) for subs in by_key.values())
    back = sorted((r["partition_key"], r["data"]) for r in kpl_cat(sim.endpoint, "s", 1201))
    assert back == sorted(records + [("k", b"routed")])


def test_invalid_records_fail_at_once_with_the_record():
    async def main(endpoint):
        async with kpl.Producer("s", endpoint_url=endpoint) as producer:
            with pytest.raises(kpl.RecordFailed) as empty:
                await producer.send("", b"x")
            with pytest.raises(kpl.RecordFailed) as ehk:
                await producer.send("k", b"x", explicit_hash_key="-1")
            with pytest.raises(kpl.RecordFailed) as big:
                await producer.send("k", b"x" * (1 << 20))
            with pytest.raises(kpl.RecordFailed) as batch:
                await producer.send_batch([("a", b"1"), ("", b"2")])
            with pytest.raises(TypeError):
                await producer.send("k", 42)
            with pytest.raises(TypeError):
                await producer.send_batch([("k",)])
        with pytest.raises(kpl.RecordFailed) as closed:
            await producer.send("k", b"after close")
        return empty.value, ehk.value, big.value, batch.value, closed.value

    from conftest import start_sim
    server = start_sim("--stream", "s:1")
    try:
        empty, ehk, big, batch, closed = run(main(server.endpoint))
    finally:
        server.stop()
    assert empty.reason == "invalid" and "partition key is empty" in empty.message
    assert empty.record == kpl.UserRecord("", b"x", None)
    assert ehk.reason == "invalid" and "explicit hash key" in ehk.message
    assert big.reason == "invalid" and "over the stream's limit" in big.message
    assert batch.reason == "invalid" and batch.message.startswith("record 1 of the batch")
    assert batch.record.data == b"2"
    assert closed.reason == "closed" and closed.record.data == b"after close"


def test_a_missing_stream_fails_start(sim):
    async def main():
        with pytest.raises(kpl.ProducerError, match="no-such-stream"):
            async with kpl.Producer("no-such-stream", endpoint_url=sim.endpoint):
                pass

    run(main())


@pytest.mark.sim_args("--fail-requests", "AccessDeniedException:400:1")
def test_a_fatal_error_fails_the_record_with_its_reason_and_record(sim):
    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, **FAST) as producer:
            single = await producer.send("k", b"refused")
            batch = await producer.send_batch([("a", b"1"), ("b", b"2")])
            with pytest.raises(kpl.RecordFailed) as failed:
                await single
            return failed.value, await batch

    failed, batch = run(main())
    assert failed.reason == "fatal" and failed.code == "AccessDeniedException"
    assert "no retry can fix" in failed.message
    assert failed.record == kpl.UserRecord("k", b"refused") and failed.attempts == 1
    assert [type(o) for o in batch] == [kpl.RecordFailed, kpl.RecordFailed]
    assert [o.record.data for o in batch] == [b"1", b"2"]


@pytest.mark.sim_args("--fail-entries", "InternalFailure:0.5", "--seed", "7")
def test_failed_entries_are_retried_until_stored(sim):
    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, aggregation_enabled=False,
                                backoff_base=0.01, backoff_cap=0.05, **FAST) as producer:
            return await (await producer.send_batch([(f"k{i}", b"x%d" % i) for i in range(200)]))

    outcomes = run(main())
    assert all(isinstance(o, kpl.Receipt) for o in outcomes), outcomes[:3]
    assert any(o.attempts > 1 for o in outcomes)
    assert len(kpl_cat(sim.endpoint, "s", 200)) == 200


@pytest.mark.sim_args("--fail-entries", "InternalFailure:1")
def test_attempts_exhausted(sim):
    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, max_attempts=2,
                                backoff_base=0.01, backoff_cap=0.02, **FAST) as producer:
            with pytest.raises(kpl.RecordFailed) as e:
                await (await producer.send("k", b"never"))
            return e.value

    e = run(main())
    assert e.reason == "attempts_exhausted" and e.attempts == 2 and e.code == "InternalFailure"


@pytest.mark.sim_args("--latency-ms", "1500")
def test_send_waits_for_buffer_room(sim):
    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, max_outstanding_records=1,
                                **FAST) as producer:
            native = producer._native
            accepted0, first = native.send("k", b"1", None)
            # The buffer holds one record: the second is not taken until the first resolves.
            accepted1, second = native.send("k", b"2", None)
            assert accepted0 is None and accepted1 is not None
            assert not accepted1.done()
            await accepted1
            assert first.done()
            # Through the public API: send waits, then hands back the receipt future.
            third = await producer.send("k", b"3")
            assert second.done()
            with pytest.raises(kpl.RecordFailed) as too_large:
                await producer.send_batch([("a", b"1"), ("b", b"2")])
            return [await f for f in (first, second, third)], too_large.value

    receipts, too_large = run(main())
    assert all(isinstance(r, kpl.Receipt) for r in receipts)
    assert too_large.reason == "batch_too_large"


@pytest.mark.sim_args("--latency-ms", "300")
def test_close_resolves_every_record_in_flight(sim):
    async def main():
        producer = kpl.Producer("s", endpoint_url=sim.endpoint, record_max_buffered_time=5)
        await producer.start()
        futures = [await producer.send(f"k{i}", b"v%d" % i) for i in range(300)]
        batch = await producer.send_batch([(f"b{i}", b"w") for i in range(300)])
        assert not any(f.done() for f in futures)  # buffered for up to 5 s
        await producer.close()
        assert producer.closed
        receipts = [await f for f in futures] + await batch
        return receipts

    receipts = run(main())
    assert len(receipts) == 600 and all(isinstance(r, kpl.Receipt) for r in receipts)
    assert len(kpl_cat(sim.endpoint, "s", 600)) == 600


@pytest.mark.sim_args("--hang", "1", "--hang-ms", "60000")
def test_abort_fails_records_in_flight_with_their_records(sim):
    async def main():
        producer = kpl.Producer("s", endpoint_url=sim.endpoint, **FAST)
        await producer.start()
        futures = [await producer.send("k", b"v%d" % i) for i in range(5)]
        await asyncio.sleep(0.2)  # let the put go out (it hangs)
        await producer.abort()
        results = await asyncio.gather(*futures, return_exceptions=True)
        with pytest.raises(kpl.RecordFailed):
            await producer.send("k", b"late")
        return results

    results = run(main())
    assert all(isinstance(r, kpl.RecordFailed) and r.reason == "aborted" for r in results)
    assert sorted(r.record.data for r in results) == [b"v%d" % i for i in range(5)]


def test_async_with_flushes_when_the_body_raises(sim):
    futures = []

    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, record_max_buffered_time=5) as p:
            for i in range(50):
                futures.append(await p.send("k", b"v%d" % i))
            raise KeyError("the application failed")

    with pytest.raises(KeyError):
        run(main())
    assert all(f.done() and isinstance(f.result(), kpl.Receipt) for f in futures)
    assert len(kpl_cat(sim.endpoint, "s", 50)) == 50


def test_compressed_records_read_back(sim):
    async def main():
        async with kpl.Producer("s", endpoint_url=sim.endpoint, compression="zstd", **FAST) as p:
            return await (await p.send_batch([(f"k{i}", b"%d " % i * 20) for i in range(100)]))

    assert all(isinstance(o, kpl.Receipt) for o in run(main()))
    back = kpl_cat(sim.endpoint, "s", 100)
    assert sorted(r["data"] for r in back) == sorted(b"%d " % i * 20 for i in range(100))


CHILD = textwrap.dedent("""
    import asyncio, sys, kpl
    endpoint, mode = sys.argv[1], sys.argv[2]
    receipts = []
    async def main():
        if mode == "unclosed":
            producer = kpl.Producer("s", endpoint_url=endpoint, record_max_buffered_time=2)
            await producer.start()
            for i in range(100):
                await producer.send("k", b"unclosed %d" % i)
            return  # neither closed nor awaited: flushed at interpreter exit
        async with kpl.Producer("s", endpoint_url=endpoint, record_max_buffered_time=2) as p:
            for i in range(1_000_000):
                f = await p.send("k%d" % (i % 10), b"sigint %d" % i)
                f.add_done_callback(lambda f: receipts.append(f.result()))
                if i == 200:
                    print("ready", flush=True)
                if i % 100 == 0:
                    await asyncio.sleep(0.01)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("receipts", len(receipts), flush=True)
""")


def test_an_unclosed_producer_is_flushed_at_exit_without_hanging(sim):
    out = subprocess.run([sys.executable, "-c", CHILD, sim.endpoint, "unclosed"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(kpl_cat(sim.endpoint, "s", 100)) == 100


def test_ctrl_c_closes_and_resolves_what_was_sent(sim):
    child = subprocess.Popen([sys.executable, "-c", CHILD, sim.endpoint, "sigint"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    count = int(out.split()[-1])
    assert count > 200
    # Every record sent was stored and its receipt resolved before the process ended.
    assert len(kpl_cat(sim.endpoint, "s")) == count

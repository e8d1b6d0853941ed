"""Against kinesalite, read back through the reference codec (aws-kinesis-agg): what kpl for
Python writes, aws_kinesis_agg reads; what aws_kinesis_agg aggregates, kpl.deaggregate reads;
and kpl.lambda_records reads a Lambda event as the reference does."""
import asyncio
import base64
import random

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

import kpl
from conftest import kpl_cat


def produce(endpoint, name, records, **settings):
    async def main():
        async with kpl.Producer(name, endpoint_url=endpoint, record_max_buffered_time=0.05,
                                **settings) as producer:
            batch = await producer.send_batch(records[: len(records) // 2])
            singles = [await producer.send(k, d) for k, d in records[len(records) // 2:]]
            return await batch + [await f for f in singles]

    return asyncio.run(asyncio.wait_for(main(), 120))


def sample(n, seed=1):
    rng = random.Random(seed)
    return [(f"key-{rng.randrange(500):04d}", rng.randbytes(rng.randrange(1, 300)))
            for _ in range(n)]


def reference_read(raw):
    """User records (pk, data) by aws-kinesis-agg's deaggregator over GetRecords output."""
    out = []
    boto_style = [dict(r, Data=base64.b64decode(r["Data"])) for r in raw]
    for r in iter_deaggregate_records(boto_style, data_format="Boto3"):
        k = r["kinesis"]
        data = base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]
        out.append((k["partitionKey"], data))
    return out


def test_records_read_back_through_the_reference_codec_and_kpl(kinesalite, stream):
    name, api = stream
    records = sample(3000)
    outcomes = produce(kinesalite.endpoint, name, records)
    assert all(isinstance(o, kpl.Receipt) for o in outcomes)
    raw = api.raw_records(name)
    assert len(raw) < len(records)  # aggregated
    assert sorted(reference_read(raw)) == sorted(records)
    # kpl.deaggregate over the same raw records gives the same user records.
    ours = [(u.partition_key, u.data) for r in raw
            for u in kpl.deaggregate(base64.b64decode(r["Data"]), r["PartitionKey"])]
    assert sorted(ours) == sorted(records)
    # And the workspace's reader agrees.
    assert sorted((r["partition_key"], r["data"]) for r in kpl_cat(kinesalite.endpoint, name)) \
        == sorted(records)
    # Every receipt names a Kinesis record that was stored, on its shard.
    stored = {(r["ShardId"], r["SequenceNumber"]) for r in raw}
    assert {(o.shard_id, o.sequence_number) for o in outcomes} == stored


def test_unaggregated_records_are_plain_kinesis_records(kinesalite, stream):
    name, api = stream
    records = sample(100, seed=2)
    produce(kinesalite.endpoint, name, records, aggregation_enabled=False)
    raw = api.raw_records(name)
    assert sorted((r["PartitionKey"], base64.b64decode(r["Data"])) for r in raw) == sorted(records)


def test_deaggregate_reads_the_reference_aggregate():
    agg = RecordAggregator()
    users = [("pk-%d" % i, b"data %d" % i, str(i * 10**30) if i % 3 == 0 else None)
             for i in range(50)]
    for pk, data, ehk in users:
        assert agg.add_user_record(pk, data, ehk) is None
    pk, ehk, data = agg.clear_and_get().get_contents()
    got = kpl.deaggregate(data, pk, ehk)
    assert [(u.partition_key, u.data) for u in got] == [(p, d) for p, d, _ in users]
    assert [u.explicit_hash_key for u in got if u.explicit_hash_key is not None][:1] == ["0"]
    assert kpl.deaggregate(b"plain", "k") == [kpl.UserRecord("k", b"plain", None)]
    # Strict: the KPL magic with a bad MD5 is an error, not plain data.
    with pytest.raises(ValueError):
        kpl.deaggregate(data[:-1] + bytes([data[-1] ^ 1]), pk, strict=True)


def test_lambda_records_match_the_reference(kinesalite, stream):
    name, api = stream
    records = sample(500, seed=3)
    produce(kinesalite.endpoint, name, records)
    raw = api.raw_records(name)
    event = {"Records": [{
        "eventSource": "aws:kinesis",
        "eventID": f"{r['ShardId']}:{r['SequenceNumber']}",
        "kinesis": {"partitionKey": r["PartitionKey"], "data": r["Data"],
                    "sequenceNumber": r["SequenceNumber"], "kinesisSchemaVersion": "1.0",
                    "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"]},
    } for r in raw]}
    ours = list(kpl.lambda_records(event))
    assert all(isinstance(u, kpl.LambdaRecord) for u in ours)
    assert sorted((u.partition_key, u.data) for u in ours) == sorted(records)
    assert {u.shard_id for u in ours} <= {r["ShardId"] for r in raw}
    reference = [(r["kinesis"]["partitionKey"], base64.b64decode(r["kinesis"]["data"]))
                 for r in iter_deaggregate_records(event["Records"])]
    assert sorted(reference) == sorted((u.partition_key, u.data) for u in ours)
    first = ours[0]
    assert first.sequence_number == raw[0]["SequenceNumber"] and first.sub_sequence_number == 0

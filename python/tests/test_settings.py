"""Producer(**settings): names, units, and ProducerConfig::validate's messages."""
import asyncio

import pytest

import kpl


def test_unknown_setting_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="'max_outstanding_recs'"):
        kpl.Producer("s", max_outstanding_recs=10)


def test_values_are_validated_with_the_librarys_messages():
    with pytest.raises(ValueError) as e:
        kpl.Producer("s", collection_max_count=501)
    assert str(e.value) == (
        "invalid producer setting collection_max_count = 501: 1 to 500 (PutRecords' entry limit)"
    )
    with pytest.raises(ValueError, match="record_ttl"):
        kpl.Producer("s", record_ttl=0.0)
    with pytest.raises(ValueError, match="backoff"):
        kpl.Producer("s", backoff_base=2.0, backoff_cap=1.0)
    with pytest.raises(ValueError, match="zstd level 1 to 22"):
        kpl.Producer("s", compression="zstd:30")
    with pytest.raises(ValueError, match="not a readable zstd dictionary"):
        kpl.Producer("s", compression="/no/such/dictionary")
    with pytest.raises(ValueError, match="non-negative number of seconds"):
        kpl.Producer("s", request_timeout=-1)
    with pytest.raises(TypeError, match="max_attempts must be an int"):
        kpl.Producer("s", max_attempts=True)


def test_every_setting_is_accepted_in_its_unit():
    kpl.Producer(
        "s",
        endpoint_url="http://127.0.0.1:1",
        region="eu-west-1",
        aggregation_enabled=False,
        aggregation_max_size=10_000,
        aggregation_max_count=100,
        collection_max_count=100,
        collection_max_size=1 << 20,
        record_max_buffered_time=0.05,
        record_ttl=5,
        request_timeout=1.5,
        rate_limit_percent=100,
        rate_limit_enabled=True,
        max_attempts=3,
        backoff_base=0.01,
        backoff_cap=0.5,
        max_outstanding_records=1000,
        max_outstanding_bytes=1 << 21,
        max_concurrent_requests=4,
        compression="zstd:3",
        max_record_bytes=None,
        dedup_ids=True,
        strict_ordering=True,
    )
    assert len(kpl.SETTINGS) == 20


def test_a_producer_must_be_started_before_use():
    producer = kpl.Producer("s")

    async def main():
        with pytest.raises(RuntimeError, match="not started"):
            await producer.send("k", b"x")
        await producer.close()  # nothing to close

    asyncio.run(main())

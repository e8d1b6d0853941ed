"""kpl: a Kinesis Data Streams producer for asyncio, and the reader for what it writes.

The producer is kpl's Rust pipeline (KPL aggregation, per-shard rate limits, retries of only
the failed entries, optional zstd) running on a background runtime; this module hands it
records and resolves their futures on your event loop.

    import asyncio, kpl

    async def main():
        async with kpl.Producer("my-stream") as producer:
            receipt = await (await producer.send("user-42", b'{"clicked": true}'))
            print(receipt.shard_id, receipt.sequence_number)

    asyncio.run(main())

Credentials and region come from the usual AWS chain (environment, profile, instance role);
a loopback ``endpoint_url`` (kpl sim, kinesalite) needs none.
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import sys
import warnings
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import _kpl
from ._kpl import Receipt, deaggregate
from ._types import KplError, LambdaRecord, ProducerError, RecordFailed, UserRecord

__all__ = [
    "Producer",
    "Receipt",
    "RecordFailed",
    "ProducerError",
    "KplError",
    "UserRecord",
    "LambdaRecord",
    "deaggregate",
    "lambda_records",
    "SETTINGS",
]

#: Every setting ``Producer(**settings)`` takes (``ProducerConfig``'s fields, durations in
#: seconds, ``backoff_base``/``backoff_cap`` for the backoff).
SETTINGS: Tuple[str, ...] = tuple(_kpl.SETTINGS)

Data = Union[bytes, str]


class Producer:
    """A producer for one stream.

    ``Producer(stream, *, endpoint_url=None, region=None, **settings)`` only checks the
    settings (``ValueError`` with the library's message for a value out of range,
    ``TypeError`` for an unknown name); ``async with`` or ``await start()`` connects, and
    ``async with`` flushes and closes on the way out.

    Settings (``ProducerConfig``'s fields): ``aggregation_enabled``, ``aggregation_max_size``,
    ``aggregation_max_count``, ``collection_max_count``, ``collection_max_size``,
    ``record_max_buffered_time`` (s), ``record_ttl`` (s), ``request_timeout`` (s),
    ``rate_limit_percent``, ``rate_limit_enabled``, ``max_attempts``, ``backoff_base`` (s),
    ``backoff_cap`` (s), ``max_outstanding_records``, ``max_outstanding_bytes``,
    ``max_concurrent_requests``, ``compression`` (``None``, ``"zstd"``, ``"zstd:LEVEL"`` or
    the path of a ``kpl dict train`` dictionary), ``max_record_bytes``, ``dedup_ids``,
    ``strict_ordering``.

    A producer belongs to the event loop that started it: its futures resolve there.
    """

    def __init__(
        self,
        stream: str,
        *,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        **settings: Any,
    ) -> None:
        self._native = _kpl.NativeProducer(stream, endpoint_url, region, settings)
        self.stream = stream

    async def start(self) -> None:
        """Connects: describes the stream and lists its shards. Raises
        :class:`ProducerError` for a missing stream, missing access or no connection."""
        await self._native.start(asyncio.get_running_loop())

    async def __aenter__(self) -> "Producer":
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._native.started_ok:
            return
        try:
            await self.close()
        except asyncio.CancelledError:
            # Cancelled while closing (a second Ctrl-C): give up on what is left, so that
            # every record still unresolved fails with reason "aborted" instead of hanging.
            self._native.abort()
            raise

    async def send(
        self, partition_key: str, data: Data, *, explicit_hash_key: Optional[str] = None
    ) -> "asyncio.Future[Receipt]":
        """Hands one record over, waiting for buffer room (``max_outstanding_records`` /
        ``max_outstanding_bytes``). Returns a future that resolves to a :class:`Receipt` or
        raises :class:`RecordFailed`. ``data`` is bytes or str (sent as UTF-8).

        Records are staged and handed to the pipeline together at the end of the event
        loop's iteration (or every 256 records): so a send can return up to 256 records
        before their room is taken; once a staged group finds no room, later sends wait.

        Raises :class:`RecordFailed` at once (reason ``"invalid"`` or ``"closed"``) for a
        record that breaks a Kinesis limit or a closed producer. Cancelling a send that is
        waiting for room does not withdraw the record: it is sent once room frees.
        """
        accepted, receipt = self._native.send(partition_key, data, explicit_hash_key)
        if accepted is not None:
            await accepted
        return receipt

    async def send_batch(
        self, records: Sequence[Union[Tuple[str, Data], Tuple[str, Data, Optional[str]]]]
    ) -> "asyncio.Future[List[Union[Receipt, RecordFailed]]]":
        """Hands a list of ``(partition_key, data)`` (or ``(partition_key, data,
        explicit_hash_key)``) tuples over at once, waiting for room for all of them. Returns a
        future of one list holding a :class:`Receipt` or a :class:`RecordFailed` per record,
        in order. Much cheaper per record than ``send``.

        Raises :class:`RecordFailed` at once, taking none of the records, if one breaks a
        Kinesis limit (its message names its index), the batch is larger than the whole
        buffer (``"batch_too_large"``), or the producer is closed.
        """
        if type(records) is not list:
            records = list(records)
        accepted, outcomes = self._native.send_batch(records)
        if accepted is not None:
            await accepted
        return outcomes

    async def flush(self) -> None:
        """Sends everything accepted so far and waits until all of it has resolved."""
        await self._native.flush()

    async def close(self) -> None:
        """Stops taking records, flushes everything accepted and stops. Idempotent; a
        producer that never started has nothing to close."""
        if self._native.started_ok:
            await self._native.close()

    async def abort(self) -> None:
        """Gives up: every record not yet resolved fails with reason ``"aborted"`` (its
        record handed back; one whose call was in flight may still be stored)."""
        if self._native.started_ok:
            await self._native.abort()

    @property
    def closed(self) -> bool:
        """Whether ``close`` or ``abort`` was called."""
        return self._native.closed

    def metrics(self) -> dict:
        """The producer's counters (KPL metric names) as a dict."""
        return self._native.metrics()

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None and native.started_ok and not native.closed:
            warnings.warn(
                f"kpl.Producer({self.stream!r}) was garbage-collected without close(): "
                "its records are still sent in the background",
                ResourceWarning,
                stacklevel=2,
            )


def lambda_records(event: Mapping[str, Any]) -> Iterator[LambdaRecord]:
    """The user records of a Kinesis Lambda event (the handler's ``event`` dict), in event
    order: plain, KPL-aggregated or kpl-compressed records, deaggregated."""
    for record in event.get("Records", ()):
        kinesis = record["kinesis"]
        shard_id = record.get("eventID", "").split(":", 1)[0]
        users = deaggregate(
            base64.b64decode(kinesis["data"]),
            kinesis["partitionKey"],
            kinesis.get("explicitHashKey"),
        )
        for sub, user in enumerate(users):
            yield LambdaRecord(
                shard_id,
                kinesis["sequenceNumber"],
                sub,
                user.partition_key,
                user.data,
                user.explicit_hash_key,
            )


def _shutdown_at_exit() -> None:
    left = _kpl.shutdown_all()
    if left:
        print(
            f"kpl: {left} producer(s) still had records in flight at exit after waiting "
            "for their record_ttl; those records may not be stored",
            file=sys.stderr,
        )


# Producers never closed (or garbage-collected open) are flushed at interpreter exit,
# bounded by their record_ttl, instead of losing their records silently.
atexit.register(_shutdown_at_exit)

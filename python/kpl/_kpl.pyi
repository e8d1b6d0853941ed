"""Type stub of the native module kpl._kpl (use the ``kpl`` package)."""
import asyncio
from typing import Any, List, Optional, Tuple, Union

from ._types import RecordFailed, UserRecord

SETTINGS: List[str]

class Receipt:
    """Where a record was stored."""

    @property
    def shard_id(self) -> str: ...
    @property
    def sequence_number(self) -> str: ...
    @property
    def sub_sequence_number(self) -> int: ...
    @property
    def attempts(self) -> int: ...

class NativeProducer:
    def __init__(
        self,
        stream: str,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        settings: Optional[dict] = None,
    ) -> None: ...
    def start(self, event_loop: asyncio.AbstractEventLoop) -> "asyncio.Future[None]": ...
    def send(
        self, partition_key: str, data: Union[bytes, str], explicit_hash_key: Optional[str] = None
    ) -> Tuple[Optional["asyncio.Future[None]"], "asyncio.Future[Receipt]"]: ...
    def send_batch(
        self, records: List[Tuple[Any, ...]]
    ) -> Tuple[
        Optional["asyncio.Future[None]"], "asyncio.Future[List[Union[Receipt, RecordFailed]]]"
    ]: ...
    def flush(self) -> "asyncio.Future[None]": ...
    def close(self) -> "asyncio.Future[None]": ...
    def abort(self) -> "asyncio.Future[None]": ...
    @property
    def started_ok(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def metrics(self) -> dict: ...

class Drain:
    def __call__(self) -> None: ...

def deaggregate(
    data: bytes,
    partition_key: str,
    explicit_hash_key: Optional[str] = None,
    *,
    strict: bool = False,
) -> List[UserRecord]: ...
def shutdown_all(timeout: Optional[float] = None) -> int: ...

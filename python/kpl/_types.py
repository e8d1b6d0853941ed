"""The plain Python types of kpl: its exceptions and record tuples."""
from __future__ import annotations

from typing import NamedTuple, Optional


class KplError(Exception):
    """Base class of kpl's exceptions."""


class ProducerError(KplError):
    """The producer could not start (no such stream, no access, no connection) or could not
    see its records through (``flush``/``close`` after an abort or a pipeline failure). The
    message says what happened and what to do."""


class RecordFailed(KplError):
    """A record was not stored, or not accepted.

    Attributes:
        reason: why, one of ``"fatal"`` (Kinesis refused it with an error no retry fixes:
            see ``code``), ``"expired"`` (not stored within ``record_ttl``),
            ``"attempts_exhausted"`` (``max_attempts`` retryable failures), ``"aborted"``
            (``abort()`` or a cancelled close), ``"pipeline_failed"``, ``"lost"``; or, when
            ``send``/``send_batch`` refused it: ``"invalid"`` (breaks a Kinesis limit),
            ``"closed"`` (the producer was closed), ``"batch_too_large"``.
        message: what happened and what to do.
        record: the record (a :class:`UserRecord`), to log, spool or resend; ``None`` for
            ``"lost"`` and for a batch refused as a whole.
        attempts: PutRecords attempts that carried it.
        code: the error code of the last attempt (e.g. ``"AccessDeniedException"``), if any.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        record: Optional["UserRecord"] = None,
        attempts: int = 0,
        code: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.record = record
        self.attempts = attempts
        self.code = code

    def __reduce__(self):  # picklable, for multiprocessing
        return (type(self), (self.reason, self.message, self.record, self.attempts, self.code))


class UserRecord(NamedTuple):
    """One user record: what ``send`` takes and what ``deaggregate`` gives back."""

    partition_key: str
    data: bytes
    explicit_hash_key: Optional[str] = None


class LambdaRecord(NamedTuple):
    """One user record of a Kinesis Lambda event, with where it was read."""

    shard_id: str
    sequence_number: str
    sub_sequence_number: int
    partition_key: str
    data: bytes
    explicit_hash_key: Optional[str] = None

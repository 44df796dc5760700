"""The stored form of job specs and results: the contract's serialized messages.

Job databases (schema version 3) hold each job's ``lakehouse.v1.JobSpec`` and ``JobResult``
as serialized bytes, and clients get them back as those messages, so the stored format is
the contract's. The job store keeps the bytes opaque (its behaviour suite stores any bytes)
and core works on domain values; this codec, handed to core by the wiring as its
``JobCodec`` port, is where the two meet. It lives with the servicers because they are the
layer that owns the contract and its conversions (``convert.py``): putting it in the job
store adapter would have needed an exception to the import rule, and would have made the
store decode what it only needs to keep.

Specs are serialized deterministically, so that equal specs are equal bytes and their
digest (compared on request-id retries, and stored) is the one earlier versions stored.
Failures (``google.rpc.Status``) are not here: the domain builds them (``domain/status.py``).
"""

from __future__ import annotations

from lakehouse.domain.job_results import JobResult
from lakehouse.domain.job_specs import JobSpec
from lakehouse.services.convert import (
    job_result_from_proto,
    job_result_to_proto,
    job_spec_from_proto,
    job_spec_to_proto,
)
from lakehouse.v1 import job_pb2


class ProtoJobCodec:
    """Job specs and results as serialized ``lakehouse.v1`` messages (core's ``JobCodec``)."""

    def encode_spec(self, spec: JobSpec) -> bytes:
        """The serialized ``JobSpec`` (deterministic)."""
        return job_spec_to_proto(spec).SerializeToString(deterministic=True)

    def decode_spec(self, data: bytes) -> JobSpec:
        """The spec of a serialized ``JobSpec``."""
        return job_spec_from_proto(job_pb2.JobSpec.FromString(data))

    def encode_result(self, result: JobResult | None) -> bytes:
        """The serialized ``JobResult``."""
        return job_result_to_proto(result).SerializeToString()

    def decode_result(self, data: bytes) -> JobResult | None:
        """The result of a serialized ``JobResult``."""
        return job_result_from_proto(job_pb2.JobResult.FromString(data))

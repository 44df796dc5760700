"""What only the object store adapters do: their construction and S3 reachability.

What every implementation of ObjectStorePort does is in tests/ports/test_object_store_behaviour.py.
"""

from __future__ import annotations

import pytest

from fixtures import s3
from fixtures.net import free_port
from lakehouse.adapters.object_store import object_store_for
from lakehouse.config import S3Settings
from lakehouse.domain.errors import InvalidArgument, Unavailable


async def test_s3_check_fails_for_missing_bucket_and_dead_endpoint(s3_endpoint: str) -> None:
    missing = object_store_for("s3://no-such-bucket/wh", S3Settings(**s3.s3_settings(s3_endpoint)))
    with pytest.raises(Unavailable):
        await missing.check()
    await missing.close()
    dead_settings = S3Settings(
        **{**s3.s3_settings(s3_endpoint), "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    dead = object_store_for("s3://bucket/wh", dead_settings)
    with pytest.raises(Unavailable) as exc:
        await dead.check()
    assert exc.value.reason == "OBJECT_STORE_UNAVAILABLE"
    await dead.close()


def test_unsupported_scheme_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        object_store_for("gs://bucket/wh", S3Settings())

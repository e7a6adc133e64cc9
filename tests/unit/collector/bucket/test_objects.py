"""``podcap.collector.bucket.objects`` without a server: ``s3://`` URLs parse (and bad ones are the user's one-line
error), keys follow the bucket layout, and botocore's errors become ours — refused credentials or permissions as
``ObjectStoreDeniedError`` naming what to check, everything else as a retryable ``ObjectStoreError``. (The object
store itself is tested against a real gateway in ``tests/integration/test_object_storage.py``.)"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from podcap.collector.bucket.objects import (
    BucketUrl,
    ObjectNotFoundError,
    ObjectStoreDeniedError,
    ObjectStoreError,
    StorageUrlError,
    _error,
)
from podcap.errors import DeniedError, InvalidInputError, NotFoundError, UnavailableError


def test_bucket_urls() -> None:
    assert BucketUrl.parse("s3://caps") == BucketUrl("caps", "")
    assert BucketUrl.parse("s3://caps/team/a/") == BucketUrl("caps", "team/a")
    assert BucketUrl("caps", "team/a").key("c1", "shop", "web-0") == "team/a/c1/shop/web-0"
    assert BucketUrl("caps", "").key("c1") == "c1"
    assert str(BucketUrl("caps", "x")) == "s3://caps/x"


@pytest.mark.parametrize("url", ["caps", "http://caps/x", "s3:///x", "/data"])
def test_bad_storage_urls_are_the_users_error(url: str) -> None:
    with pytest.raises(StorageUrlError, match="s3://BUCKET"):
        BucketUrl.parse(url)
    assert issubclass(StorageUrlError, InvalidInputError)


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"])
def test_refused_credentials_say_what_to_check(code: str) -> None:
    e = _error(ClientError({"Error": {"Code": code, "Message": "no"}}, "PutObject"), "PUT k")
    assert isinstance(e, ObjectStoreDeniedError) and isinstance(e, DeniedError)
    assert code in str(e) and "AWS_ACCESS_KEY_ID" in str(e)


def test_a_missing_key_or_bucket_is_not_found() -> None:
    for code in ("404", "NoSuchKey", "NoSuchBucket"):
        e = _error(ClientError({"Error": {"Code": code, "Message": "x"}}, "HeadObject"), "HEAD k")
        assert isinstance(e, ObjectNotFoundError) and isinstance(e, NotFoundError)


def test_everything_else_is_retryable() -> None:
    throttled = _error(ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "PutObject"), "PUT k")
    down = _error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "PUT k")
    for e in (throttled, down):
        assert isinstance(e, ObjectStoreError) and isinstance(e, UnavailableError)
    assert "SlowDown" in str(throttled) and "EndpointConnectionError" in str(down)

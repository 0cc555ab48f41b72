"""A moto S3 server on 127.0.0.1 for the object-storage tests (no network needed).

:func:`s3_server` starts moto's threaded server on a free port and stops it; the
environment of :func:`s3_environment` points s3fs/botocore at it with dummy
credentials (moto accepts any). :func:`make_bucket` creates a bucket through s3fs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)
"""Variables botocore reads: the tests set or clear every one of them."""
_BUCKETS = iter(range(10**6))


@contextmanager
def s3_server() -> Iterator[str]:
    """A running moto S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_environment(endpoint: str, home: str) -> dict[str, str | None]:
    """Environment variables for s3fs/botocore talking to ``endpoint`` with dummy keys
    (``None``: unset). ``home`` is an empty folder, so no ~/.aws file is read."""
    env: dict[str, str | None] = dict.fromkeys(AWS_VARIABLES)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_SHARED_CREDENTIALS_FILE=f"{home}/credentials",
        AWS_CONFIG_FILE=f"{home}/config",
        AWS_EC2_METADATA_DISABLED="true",
        HIPI_STORAGE_OPTIONS=None,
    )
    return env


def make_bucket(name: str) -> None:
    """Create bucket ``name`` on the server the environment points at."""
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)


def fresh_bucket(endpoint: str, home: str, prefix: str, monkeypatch: Any) -> str:
    """Point this test's environment (inherited by local:N workers and CLI subprocesses)
    at ``endpoint`` with ``home`` as the AWS home folder, and create a new, empty bucket
    named ``prefix-PID-N``."""
    for key, value in s3_environment(endpoint, home).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    name = f"{prefix}-{os.getpid()}-{next(_BUCKETS)}"
    make_bucket(name)
    return name

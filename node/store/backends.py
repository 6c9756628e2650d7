"""Turn a store URL from the configuration into (fsspec filesystem, root path on it).

    file:///srv/store  or  /srv/store  or  ./store     local disk (directory created)
    memory://name                                      process memory (tests)
    s3://bucket/prefix                                 S3 or an S3-compatible server

S3 options (the `options` dict): `endpoint_url`, `key`, `secret`, `region` (default
"us-east-1"), `create_bucket` (default True: create the bucket if it is missing); any other key
is passed to `s3fs.S3FileSystem` unchanged. The secret never appears in messages.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from node.errors import StoreError

__all__ = ["open_backend"]

_OPTION_ALIASES = {
    "access_key": "key",
    "access_key_id": "key",
    "aws_access_key_id": "key",
    "secret_key": "secret",
    "secret_access_key": "secret",
    "aws_secret_access_key": "secret",
    "region_name": "region",
}


def open_backend(url: str, options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Return (filesystem, root) for `url`; the root is a path on that filesystem.

    Raises StoreError for an unknown scheme (named), a URL without its required part (bucket,
    memory name), or a local directory that cannot be created.
    """
    options = dict(options or {})
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive, not a scheme
        return _local(url, parts.netloc, parts.path, scheme)
    if scheme == "memory":
        name = (parts.netloc + parts.path).strip("/")
        if not name:
            raise StoreError("memory store URL needs a name: memory://NAME")
        return MemoryFileSystem(), f"/{name}"
    if scheme == "s3":
        return _s3(parts.netloc, parts.path, options)
    raise StoreError(f"unsupported store URL scheme {scheme!r} (use file, memory or s3)")


def _local(url: str, netloc: str, path: str, scheme: str) -> tuple[AbstractFileSystem, str]:
    if scheme == "file":
        if netloc not in ("", "localhost"):
            raise StoreError(f"file URL must name a local path, not host {netloc!r}")
        raw = unquote(path)
    else:
        raw = url
    root = os.path.abspath(os.path.expanduser(raw))
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)  # its owner's only (node.store.modes)
    except OSError as exc:
        raise StoreError(f"cannot create store directory {root}: {exc.strerror}") from exc
    return LocalFileSystem(auto_mkdir=True), LocalFileSystem._strip_protocol(root)


def _s3(bucket: str, prefix: str, options: dict[str, Any]) -> tuple[AbstractFileSystem, str]:
    import s3fs  # imported here: its botocore stack costs ~0.3 s and only S3 stores need it

    if not bucket:
        raise StoreError("s3 store URL needs a bucket: s3://BUCKET/PREFIX")
    opts = {_OPTION_ALIASES.get(k, k): v for k, v in options.items()}
    region = opts.pop("region", None) or "us-east-1"
    create_bucket = bool(opts.pop("create_bucket", True))
    client_kwargs = dict(opts.pop("client_kwargs", None) or {})
    client_kwargs.setdefault("region_name", region)
    endpoint_url = opts.pop("endpoint_url", None)
    if endpoint_url:
        client_kwargs["endpoint_url"] = endpoint_url
    # A sender waits on the store while its C-STORE is open: an S3 that went away must
    # give a retryable failure within seconds, not after botocore's and s3fs's default
    # minutes of timeouts and retries (the fault suite saw senders hang for minutes).
    config_kwargs = {"connect_timeout": 5, "read_timeout": 60,
                     "retries": {"max_attempts": 2, "mode": "standard"},
                     **(opts.pop("config_kwargs", None) or {})}
    fs = s3fs.S3FileSystem(
        config_kwargs=config_kwargs,
        key=opts.pop("key", None),
        secret=opts.pop("secret", None),
        endpoint_url=endpoint_url,
        client_kwargs=client_kwargs,
        **opts,
    )
    if create_bucket:
        _ensure_bucket(fs, bucket, region)
    root = bucket + ("/" + prefix.strip("/") if prefix.strip("/") else "")
    return fs, root


def _ensure_bucket(fs: Any, bucket: str, region: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        fs.call_s3("head_bucket", Bucket=bucket)
        return
    except FileNotFoundError:
        pass
    except (OSError, BotoCoreError, ClientError) as exc:
        raise StoreError(f"cannot reach bucket {bucket!r}") from exc
    # us-east-1 is the one region that must not be named as a location constraint.
    params: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        params["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        fs.call_s3("create_bucket", **params)
    except (OSError, BotoCoreError, ClientError) as exc:
        # Someone else may have created it in between.
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
        except (OSError, BotoCoreError, ClientError):
            raise StoreError(f"cannot create bucket {bucket!r}") from exc
    fs.invalidate_cache()

"""Locations the trainer reads from and writes to: file://, pvc:// (a mounted volume) and s3://.

A `Location` is a file or a folder-like prefix. Local locations write atomically
(temporary name, then rename); S3 uploads carry the configured server-side encryption.
Credentials are never passed in: boto3 reads them from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION...).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

PVC_ROOT_ENV = "WHETSTONE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"


class StorageError(RuntimeError):
    """A location could not be read or written; the message names the URI and the cause."""


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> ("s3", "bucket/key"). Raises StorageError without a scheme."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme or not rest:
        raise StorageError(f"{uri!r} is not a URI: expected scheme://path (file, pvc, s3)")
    return scheme, rest


def pvc_root() -> Path:
    """Where persistent volume claims are mounted: $WHETSTONE_PVC_ROOT/<claim>/..."""
    return Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))


def resolve_relative_file_uri(uri: str, base: Path) -> str:
    """Turn a relative `file://data/x.jsonl` into an absolute `file:///base/data/x.jsonl`.

    Other URIs (absolute file URIs included) come back unchanged.
    """
    scheme, rest = split_uri(uri)
    if scheme != "file" or rest.startswith("/"):
        return uri
    absolute = (base / rest).resolve()
    suffix = "/" if rest.endswith("/") else ""
    return f"file://{absolute.as_posix()}{suffix}"


def local_path_of(uri: str) -> Path | None:
    """The filesystem path behind a file:// or pvc:// URI; None for remote schemes."""
    scheme, rest = split_uri(uri)
    if scheme == "file":
        # A relative file:// URI is relative to the working directory.
        return Path(rest)
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        return pvc_root() / claim / sub if sub else pvc_root() / claim
    return None


class Location(ABC):
    """A file or a folder-like prefix at a URI."""

    uri: str

    @abstractmethod
    def child(self, *parts: str) -> Location:
        """The location `parts` below this one."""

    @abstractmethod
    def read_bytes(self) -> bytes:
        """Contents of the file at this location."""

    @abstractmethod
    def write_bytes(self, data: bytes) -> None:
        """Write the file at this location (atomically where the medium allows)."""

    @abstractmethod
    def exists(self) -> bool:
        """True when a file exists at this location."""

    @abstractmethod
    def list_children(self) -> list[str]:
        """Names of the immediate children (files and folders) of this folder."""

    @abstractmethod
    def list_files(self) -> list[str]:
        """Relative paths (with '/') of every file below this folder."""

    @abstractmethod
    def upload_dir(self, local: Path, *, last: str | None = None) -> None:
        """Copy the local folder here; the file named `last` is written after all others."""

    @abstractmethod
    def download_dir(self, local: Path) -> None:
        """Copy every file below this folder into `local`."""

    @abstractmethod
    def delete(self) -> None:
        """Remove this folder (or file) and everything below it; absent is fine."""

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def __str__(self) -> str:
        return self.uri


def _join_uri(uri: str, parts: tuple[str, ...]) -> str:
    base = uri.rstrip("/")
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"{base}/{tail}" if tail else base


class LocalLocation(Location):
    """A file:// or pvc:// location: a path on a local or mounted filesystem."""

    def __init__(self, uri: str, path: Path) -> None:
        self.uri = uri
        self.path = path

    def child(self, *parts: str) -> LocalLocation:
        return LocalLocation(_join_uri(self.uri, parts), self.path.joinpath(*parts))

    def read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri}: not found ({self.path})") from exc
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot read {self.path}: {exc}") from exc

    def write_bytes(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def list_children(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir())

    def list_files(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(
            p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()
        )

    def upload_dir(self, local: Path, *, last: str | None = None) -> None:
        # Copy into a hidden sibling, then swap it in with one rename.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            skip_last = (lambda _d, names: [n for n in names if n == last]) if last else None
            shutil.copytree(local, staging, ignore=skip_last)
            if last and (local / last).exists():
                shutil.copy2(local / last, staging / last)
            if self.path.exists():
                shutil.rmtree(self.path)
            staging.replace(self.path)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def download_dir(self, local: Path) -> None:
        if not self.path.is_dir():
            raise StorageError(f"{self.uri}: no such folder ({self.path})")
        shutil.copytree(self.path, local, dirs_exist_ok=True)

    def delete(self) -> None:
        if self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.exists():
            self.path.unlink()


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (AWS_ENDPOINT_URL honoured)."""
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - boto3 is a trainer dependency
        raise StorageError("s3:// needs boto3: pip install boto3") from exc
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


class S3Location(Location):
    """An s3://bucket/key location; uploads carry server-side encryption."""

    def __init__(self, uri: str, kms_key_id: str | None = None, client: Any = None) -> None:
        scheme, rest = split_uri(uri)
        if scheme != "s3":
            raise StorageError(f"{uri}: not an s3:// URI")
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket name")
        self.uri = uri
        self.bucket = bucket
        self.key = key
        self.kms_key_id = kms_key_id
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _fail(self, action: str, exc: Exception) -> StorageError:
        return StorageError(f"{self.uri}: cannot {action}: {exc}")

    def child(self, *parts: str) -> S3Location:
        return S3Location(_join_uri(self.uri, parts), self.kms_key_id, self._client)

    @property
    def prefix(self) -> str:
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def encryption_args(self) -> dict[str, str]:
        """ExtraArgs for uploads: aws:kms with the configured key, else AES256."""
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def read_bytes(self) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"]
            return bytes(body.read())
        except Exception as exc:
            raise self._fail("read", exc) from exc

    def write_bytes(self, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=data, **self.encryption_args()
            )
        except Exception as exc:
            raise self._fail("write", exc) from exc

    def exists(self) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if str(code) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("check", exc) from exc
        return True

    def _keys(self) -> list[str]:
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except Exception as exc:
            raise self._fail("list", exc) from exc
        return keys

    def list_children(self) -> list[str]:
        names = {k[len(self.prefix) :].split("/", 1)[0] for k in self._keys()}
        return sorted(n for n in names if n)

    def list_files(self) -> list[str]:
        return sorted(k[len(self.prefix) :] for k in self._keys() if not k.endswith("/"))

    def upload_dir(self, local: Path, *, last: str | None = None) -> None:
        files = sorted(p for p in local.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(local).as_posix() == last)
        try:
            for path in files:
                key = self.prefix + path.relative_to(local).as_posix()
                self.client.upload_file(
                    str(path), self.bucket, key, ExtraArgs=self.encryption_args()
                )
        except Exception as exc:
            raise self._fail("upload", exc) from exc

    def download_dir(self, local: Path) -> None:
        keys = self._keys()
        if not keys:
            raise StorageError(f"{self.uri}: no objects under this prefix")
        try:
            for key in keys:
                if key.endswith("/"):
                    continue
                target = local / key[len(self.prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, key, str(target))
        except Exception as exc:
            raise self._fail("download", exc) from exc

    def delete(self) -> None:
        keys = self._keys()
        try:
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        except Exception as exc:
            raise self._fail("delete", exc) from exc


def open_location(uri: str, *, kms_key_id: str | None = None) -> Location:
    """The Location for a file://, pvc:// or s3:// URI."""
    scheme, _ = split_uri(uri)
    if scheme in ("file", "pvc"):
        path = local_path_of(uri)
        assert path is not None
        return LocalLocation(uri, path)
    if scheme == "s3":
        return S3Location(uri, kms_key_id=kms_key_id)
    raise StorageError(f"{uri}: unsupported scheme {scheme!r} here (file, pvc, s3)")


def fetch_to_local(uri: str, cache: Path) -> Path:
    """A local folder holding what `uri` points to (downloaded into `cache` when remote)."""
    location = open_location(uri)
    if isinstance(location, LocalLocation):
        if not location.path.exists():
            raise StorageError(f"{uri}: not found ({location.path})")
        return location.path
    cache.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="fetch-", dir=cache))
    location.download_dir(target)
    return target

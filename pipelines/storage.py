"""One place to open, list, read and write by URI: local paths, ``file://`` and ``s3://``.

S3 goes through s3fs (fsspec) and, where pyarrow needs a filesystem (Parquet, Ray Data, Ray Train
storage), pyarrow's S3FileSystem. Endpoint, region and credentials come from the standard AWS
environment variables (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``) or from an explicit :class:`S3Options` (built from the experiment's
``storage.s3`` section). Credentials never appear in error messages, logs or MLflow params: every
message goes through :func:`redact`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import posixpath
import threading
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit


class StorageError(OSError):
    """A storage operation failed; the message names the URI (credentials redacted)."""


class StorageNotFound(StorageError, FileNotFoundError):
    """The URI does not exist."""


@dataclasses.dataclass(frozen=True)
class S3Options:
    """Where and how to reach S3. Unset fields fall back to the standard AWS environment variables."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None
    access_key_id: Optional[str] = dataclasses.field(default=None, repr=False)
    secret_access_key: Optional[str] = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_config(cls, s3_config: Any) -> "S3Options":
        """From `pipelines.config.S3Config` (its secrets are pydantic SecretStr)."""

        def secret(v: Any) -> Optional[str]:
            return v.get_secret_value() if v is not None else None

        return cls(
            endpoint_url=s3_config.endpoint_url,
            region=s3_config.region,
            profile=s3_config.profile,
            access_key_id=secret(s3_config.access_key_id),
            secret_access_key=secret(s3_config.secret_access_key),
        )

    def resolved_endpoint(self) -> Optional[str]:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def resolved_region(self) -> Optional[str]:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How every S3 client of the project retries and times out: botocore (s3fs: manifests, frames,
    outputs), s3fs's own retry of a failed body read, and the AWS SDK inside pyarrow (Parquet shards,
    Ray Data, Ray Train checkpoints). One policy, read here and nowhere else.

    A transient fault (connection refused or reset, a response cut off mid-body, 503 SlowDown, a
    timeout) is retried with the SDKs' exponential backoff, up to `max_attempts` attempts per request.
    A persistent outage therefore ends in an error naming the URI and the endpoint after roughly
    `max_attempts` backoffs (measured with the defaults: 9.5 s for a pyarrow read to 29 s for an s3fs
    write; see the README's "Failure behaviour"). ``CTVIS_S3_MAX_ATTEMPTS``, ``CTVIS_S3_CONNECT_TIMEOUT_S``
    and ``CTVIS_S3_READ_TIMEOUT_S`` override the defaults, in every process that reads its environment
    (Ray workers included).
    """

    max_attempts: int = 6
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        def number(name: str, default, kind):
            value = os.environ.get(name)
            if value in (None, ""):
                return default
            try:
                parsed = kind(value)
            except ValueError:
                raise StorageError(f"{name}={value!r}: expected a {kind.__name__}") from None
            if parsed <= 0:
                raise StorageError(f"{name}={value!r}: must be positive")
            return parsed

        base = cls()
        return cls(max_attempts=number("CTVIS_S3_MAX_ATTEMPTS", base.max_attempts, int),
                   connect_timeout_s=number("CTVIS_S3_CONNECT_TIMEOUT_S", base.connect_timeout_s, float),
                   read_timeout_s=number("CTVIS_S3_READ_TIMEOUT_S", base.read_timeout_s, float))

    def botocore_config(self) -> dict[str, Any]:
        """`config_kwargs` for s3fs (botocore's standard mode: exponential backoff with jitter,
        throttling errors such as SlowDown included)."""
        return {"retries": {"max_attempts": self.max_attempts, "mode": "standard"},
                "connect_timeout": self.connect_timeout_s, "read_timeout": self.read_timeout_s}

    def pyarrow_kwargs(self) -> dict[str, Any]:
        import pyarrow.fs as pafs

        return {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
                "connect_timeout": self.connect_timeout_s, "request_timeout": self.read_timeout_s}


_default_options = S3Options()
_options_lock = threading.Lock()
_fs_cache: dict[tuple, Any] = {}


def configure_s3(options: S3Options) -> None:
    """Set the process-wide S3 options (used when a call passes none)."""
    global _default_options
    with _options_lock:
        _default_options = options
        _fs_cache.clear()


# --------------------------------------------------------------------------------------------
def redact(text: str) -> str:
    """Remove credentials from a message (see `pipelines.redaction`): URI userinfo, secret-named keys
    and query parameters, the environment's secrets, and the configured S3 keys."""
    from pipelines.redaction import redact as redact_text

    text = redact_text(text)
    for value in (_default_options.access_key_id, _default_options.secret_access_key):
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


# --------------------------------------------------------------------------------------------
def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> ("s3", "bucket/key"); `file:///a/b` and `/a/b` -> ("file", "/a/b")."""
    uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise StorageError(f"invalid URI {uri!r}")
    if "://" not in uri:
        return "file", str(Path(uri).expanduser().absolute())
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return "file", parts.path or "/"
    if scheme in ("s3", "s3a"):
        if not parts.netloc:
            raise StorageError(f"{redact(uri)}: an s3 URI needs a bucket (s3://bucket/key)")
        return "s3", f"{parts.netloc}{parts.path}".rstrip("/") if parts.path != "/" else parts.netloc
    raise StorageError(f"{redact(uri)}: unsupported scheme '{scheme}' (use a local path, file:// or s3://)")


def is_remote(uri: str) -> bool:
    return split_uri(uri)[0] != "file"


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping its scheme."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *[p.strip("/") for p in parts])
    return os.path.join(uri, *parts)


def filesystem(uri: str, options: Optional[S3Options] = None):
    """The fsspec filesystem for a URI and the path inside it."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), path
    return _s3fs(options or _default_options), path


def _s3fs(options: S3Options):
    retry = RetryPolicy.from_env()
    key = ("s3fs", options, retry, os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_ENDPOINT_URL_S3"),
           os.getpid())
    with _options_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            import s3fs

            client_kwargs: dict[str, Any] = {}
            if options.resolved_region():
                client_kwargs["region_name"] = options.resolved_region()
            kwargs: dict[str, Any] = {
                "client_kwargs": client_kwargs,
                "skip_instance_cache": True,
                # Other processes (Ray workers, the MLflow server) write and delete under the same
                # prefixes: a cached directory listing would go stale, so always ask S3.
                "use_listings_cache": False,
                "config_kwargs": retry.botocore_config(),
            }
            if options.resolved_endpoint():
                kwargs["endpoint_url"] = options.resolved_endpoint()
            if options.profile:
                kwargs["profile"] = options.profile
            if options.access_key_id and options.secret_access_key:
                kwargs["key"] = options.access_key_id
                kwargs["secret"] = options.secret_access_key
            fs = s3fs.S3FileSystem(**kwargs)
            fs.retries = retry.max_attempts  # s3fs's own retry of a body read cut off mid-way (a class attribute)
            _fs_cache[key] = fs
        return fs


def pyarrow_filesystem(uri: str, options: Optional[S3Options] = None):
    """(pyarrow.fs.FileSystem, path) for a URI, for Parquet readers, Ray Data and Ray Train storage.

    Credentials are taken from the environment by pyarrow itself unless given in `options`; do
    not ship a filesystem object with explicit keys across processes (its pickle holds them).
    """
    import pyarrow.fs as pafs

    scheme, path = split_uri(uri)
    if scheme == "file":
        return pafs.LocalFileSystem(), path
    options = options or _default_options
    kwargs: dict[str, Any] = RetryPolicy.from_env().pyarrow_kwargs()
    endpoint = options.resolved_endpoint()
    if endpoint:
        parsed = urlsplit(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if options.resolved_region():
        kwargs["region"] = options.resolved_region()
    if options.access_key_id and options.secret_access_key:
        kwargs["access_key"] = options.access_key_id
        kwargs["secret_key"] = options.secret_access_key
    return pafs.S3FileSystem(**kwargs), path


# --------------------------------------------------------------------------------------------
def failure(uri: str, op: str, exc: BaseException) -> StorageError:
    """`exc` (from any client: s3fs, pyarrow) as a StorageError naming the URI and, on S3, the endpoint."""
    return _wrap(uri, op, exc)


def _wrap(uri: str, op: str, exc: BaseException) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return StorageNotFound(f"{redact(uri)}: not found ({op})")
    where = ""
    if split_uri(uri)[0] == "s3":  # an outage is read from the endpoint and the bucket
        where = f" (S3 endpoint {redact(_default_options.resolved_endpoint() or 'AWS default')})"
    return StorageError(f"{redact(uri)}{where}: {op} failed: {redact(f'{type(exc).__name__}: {exc}')}")


def exists(uri: str, options: Optional[S3Options] = None) -> bool:
    fs, path = filesystem(uri, options)
    try:
        return bool(fs.exists(path))
    except Exception as exc:  # noqa: BLE001 - reported with the URI
        raise _wrap(uri, "exists", exc) from None


def read_bytes(uri: str, options: Optional[S3Options] = None) -> bytes:
    fs, path = filesystem(uri, options)
    try:
        # Locally a directory gets its own message; on S3 a "directory" is a prefix, not an object,
        # and reads as not found (no extra LIST request per read).
        if split_uri(uri)[0] == "file" and fs.isdir(path):
            raise StorageError(f"{redact(uri)}: is a directory, not a file")
        return fs.cat_file(path)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(uri, "read", exc) from None


def read_text(uri: str, options: Optional[S3Options] = None, encoding: str = "utf-8") -> str:
    return read_bytes(uri, options).decode(encoding)


def read_json(uri: str, options: Optional[S3Options] = None) -> Any:
    text = read_text(uri, options)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{redact(uri)}: not valid JSON: {exc}") from None


def _check_replaceable(uri: str, target: Path) -> None:
    """A local write may create a new path or replace a regular file, nothing else: renaming onto a
    symlink would replace the link, onto a device or a directory would destroy it."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode):
        return
    kind = ("a symbolic link" if stat.S_ISLNK(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode)
            else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a pipe" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
            else "not a regular file")
    raise StorageError(f"{redact(uri)}: exists and is {kind}; refusing to replace it (write to a new path or to a "
                       f"regular file)")


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def remove_partial_writes(directory_uri: str) -> int:
    """Remove the temporary files that writers killed mid-write left in a local directory (their
    targets were never replaced, so nothing else is lost); S3 needs nothing (an object appears only
    once its upload completed). Returns how many were removed. Run it where no other writer is
    writing into the same directory."""
    folder = local_path(directory_uri)
    if folder is None or not folder.is_dir():
        return 0
    removed = 0
    for leftover in folder.glob(".*.tmp-*"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def _write_local(uri: str, path: str, data: bytes) -> None:
    """Temp file in the target's directory, then rename: a reader never sees a half-written file."""
    target = Path(path)
    _check_replaceable(uri, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _check_replaceable(uri, target)  # again: it may have appeared meanwhile
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(uri: str, data: bytes, options: Optional[S3Options] = None) -> None:
    """Write (or overwrite) a whole object. Local writes are atomic (temp file + rename) and replace
    only regular files; an S3 object appears only once its upload completed."""
    scheme, path = split_uri(uri)
    try:
        if scheme == "file":
            _write_local(uri, path, data)
            return
        fs, path = filesystem(uri, options)
        fs.pipe_file(path, data)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(uri, "write", exc) from None


def write_text(uri: str, text: str, options: Optional[S3Options] = None) -> None:
    write_bytes(uri, text.encode("utf-8"), options)


def write_json(uri: str, obj: Any, options: Optional[S3Options] = None, indent: Optional[int] = None) -> None:
    write_text(uri, json.dumps(obj, indent=indent), options)


class _AtomicLocalWriter(io.BufferedWriter):
    """Streaming local write into a temp file beside the target, renamed onto it on a clean close."""

    def __init__(self, uri: str, path: str):
        self._uri, self._target = uri, Path(path)
        _check_replaceable(uri, self._target)
        self._target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_name(self._target)
        super().__init__(io.FileIO(self._tmp, "wb"))
        self._failed = False

    def __exit__(self, exc_type, exc, tb):
        self._failed = exc_type is not None
        return super().__exit__(exc_type, exc, tb)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if self._failed:
            self._tmp.unlink(missing_ok=True)
            return
        try:
            _check_replaceable(self._uri, self._target)
            os.replace(self._tmp, self._target)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise


def open_uri(uri: str, mode: str = "rb", options: Optional[S3Options] = None):
    """A file object (context manager) for streaming reads/writes. Local writes land atomically
    (temp file + rename on a clean close) and only onto regular files or new paths."""
    fs, path = filesystem(uri, options)
    try:
        if mode in ("wb", "w") and split_uri(uri)[0] == "file":
            writer = _AtomicLocalWriter(uri, path)
            return writer if mode == "wb" else io.TextIOWrapper(writer, encoding="utf-8")
        return fs.open(path, mode)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(uri, f"open({mode})", exc) from None


def _to_uri(uri: str, path: str) -> str:
    scheme = split_uri(uri)[0]
    if scheme == "file":
        return path if "://" not in uri else f"file://{path}"
    return f"s3://{path}"


def ls(uri: str, options: Optional[S3Options] = None, recursive: bool = False) -> list[str]:
    """The URIs directly under `uri` (or all files below it with `recursive`), sorted."""
    fs, path = filesystem(uri, options)
    try:
        if not fs.exists(path):
            raise FileNotFoundError(path)
        if recursive:
            entries = fs.find(path)
        else:
            entries = fs.ls(path, detail=False)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(uri, "list", exc) from None
    return sorted(_to_uri(uri, e) for e in entries if e.rstrip("/") != path.rstrip("/"))


def glob(pattern: str, options: Optional[S3Options] = None) -> list[str]:
    fs, path = filesystem(pattern, options)
    try:
        return sorted(_to_uri(pattern, e) for e in fs.glob(path))
    except Exception as exc:  # noqa: BLE001
        raise _wrap(pattern, "glob", exc) from None


def size(uri: str, options: Optional[S3Options] = None) -> int:
    fs, path = filesystem(uri, options)
    try:
        return int(fs.size(path))
    except Exception as exc:  # noqa: BLE001
        raise _wrap(uri, "size", exc) from None


def remove(uri: str, options: Optional[S3Options] = None, recursive: bool = False) -> None:
    fs, path = filesystem(uri, options)
    try:
        fs.rm(path, recursive=recursive)
    except Exception as exc:  # noqa: BLE001
        raise _wrap(uri, "remove", exc) from None


def makedirs(uri: str, options: Optional[S3Options] = None) -> None:
    """Create a local directory; a no-op on S3 (prefixes need no creation)."""
    scheme, path = split_uri(uri)
    if scheme == "file":
        Path(path).mkdir(parents=True, exist_ok=True)


def copy(src: str, dst: str, options: Optional[S3Options] = None, chunk_size: int = 8 << 20) -> None:
    """Copy one object between any two URIs, streaming in chunks."""
    with open_uri(src, "rb", options) as fin, open_uri(dst, "wb", options) as fout:
        while True:
            chunk = fin.read(chunk_size)
            if not chunk:
                break
            fout.write(chunk)


def local_path(uri: str) -> Optional[Path]:
    """The local path of a local URI, else None."""
    scheme, path = split_uri(uri)
    return Path(path) if scheme == "file" else None

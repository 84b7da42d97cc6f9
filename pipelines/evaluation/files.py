"""Reading evaluation inputs (plain or gzip files, local or object storage), standard library only.

Kept apart from `data` (which imports numpy and pycocotools) so that `ctvis eval` can start reading
and gunzipping the files in threads first and import numpy meanwhile: file reads and zlib release
the GIL, so the ~0.2 s of unzipping overlaps with the interpreter's imports and the GT parsing.
"""
from __future__ import annotations

import gzip
import os
import threading
import zlib


class InputError(ValueError):
    """A ground-truth or results file that cannot be evaluated; the message names file and entry."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """File contents, gunzipped when the file is gzip (by its magic bytes, whatever its name).

    `path` is a local path or a URI (`file://`, `s3://`); object storage goes through
    `pipelines.storage` (imported only then, so local evaluation stays light)."""
    try:
        if isinstance(path, str) and "://" in path:
            from pipelines import storage

            try:
                raw = storage.read_bytes(path)
            except storage.StorageNotFound:
                raise FileNotFoundError(path) from None
            except storage.StorageError as error:
                raise InputError(str(error)) from None
        else:
            with open(path, "rb") as handle:
                raw = handle.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a JSON file") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = _gunzip(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise InputError(f"{path}: corrupt gzip file ({error})") from None
    return raw


def _gunzip(raw: bytes) -> bytes:
    """gzip.decompress for the usual single-member file in one zlib pass that checks the CRC itself
    (gzip.decompress adds a separate CRC pass); zlib releases the GIL meanwhile, so a reader thread
    overlaps with parsing. Several members or trailing bytes: gzip.decompress."""
    inflater = zlib.decompressobj(31)  # 31: gzip header and trailer
    out = inflater.decompress(raw)
    if not inflater.eof or inflater.unused_data:
        return gzip.decompress(raw)
    return out


class BackgroundRead:
    """`read_bytes(path)` running in a daemon thread; result() waits and returns the bytes or raises
    what read_bytes raised (InputError for a missing or corrupt file)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self._value: bytes | None = None
        self._error: BaseException | None = None
        # A plain thread: concurrent.futures alone costs ~25 ms of imports at start-up.
        self._thread = threading.Thread(target=self._run, name="ctvis-eval-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = read_bytes(self.path)
        except BaseException as error:  # handed to the caller of result()
            self._error = error

    def result(self) -> bytes:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def read_bytes_in_background(path: str | os.PathLike) -> BackgroundRead:
    """Starts `read_bytes(path)` in a thread; the returned object's result() gives the bytes."""
    return BackgroundRead(path)

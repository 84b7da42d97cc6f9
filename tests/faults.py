"""Fault injection for the reliability suite (tests/test_faults.py): a TCP proxy that makes S3 flaky.

`FaultyProxy` listens on 127.0.0.1 and forwards each HTTP request to an upstream server (the moto
S3 server). Every request is one connection (the proxy asks the upstream to close after the
response), and for each request a seeded generator picks what happens:

- ``drop``: the connection is closed before anything is forwarded (the client sees a reset or an
  empty reply);
- ``slowdown``: the proxy answers ``503 SlowDown`` itself, as S3 does when throttling;
- ``reset``: the request is forwarded and the response cut off after its first bytes, with a TCP
  reset (``SO_LINGER`` 0) mid-body;
- ``stall``: nothing moves for ``stall_s`` seconds, then the request goes through;
- ``pass``: forwarded untouched.

``mode`` switches it at run time: ``"faulty"`` (the rates above), ``"clean"`` (everything passes),
``"down"`` (every connection is closed at once: a persistent outage). `counts` says what happened.
"""
from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b'<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>')


@dataclass
class FaultRates:
    drop: float = 0.0
    slowdown: float = 0.0
    reset: float = 0.0
    stall: float = 0.0
    stall_s: float = 1.0

    def describe(self) -> str:
        return (f"drop {self.drop:.0%}, 503 SlowDown {self.slowdown:.0%}, reset mid-body {self.reset:.0%}, "
                f"stall {self.stall:.0%} ({self.stall_s:g} s)")


@dataclass
class FaultyProxy:
    upstream: tuple[str, int]
    rates: FaultRates
    seed: int = 0
    mode: str = "faulty"
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        try:
            self._server.close()
        except OSError:
            pass

    def __enter__(self) -> "FaultyProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def _choose(self) -> str:
        with self._lock:
            if self.mode == "down":
                fault = "down"
            elif self.mode == "clean":
                fault = "pass"
            else:
                r, fault = self._rng.random(), "pass"
                for name in ("drop", "slowdown", "reset", "stall"):
                    rate = getattr(self.rates, name)
                    if r < rate:
                        fault = name
                        break
                    r -= rate
            self.counts[fault] += 1
            return fault

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        """Close with a TCP RST instead of a clean FIN. The socket is shut for reading first: that wakes
        the thread pumping the request body out of its `recv`, which would otherwise hold the socket
        open (no RST: the client would wait for the rest of the body until its read timeout)."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        sock.close()

    def _handle(self, client: socket.socket) -> None:
        try:
            head, rest = _read_head(client)
        except OSError:
            client.close()
            return
        if head is None:
            client.close()
            return
        fault = self._choose()
        if fault in ("drop", "down"):
            self._reset(client)
            return
        if fault == "slowdown":
            self._answer_slowdown(client, head, rest)
            return
        if fault == "stall":
            time.sleep(self.rates.stall_s)
        try:
            upstream = socket.create_connection(self.upstream, timeout=60)
        except OSError:
            self._reset(client)
            return
        upstream.sendall(_force_close(head) + rest)
        # request body (if any) client -> upstream, in the background
        pump = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
        pump.start()
        limit = None
        if fault == "reset":
            limit = 1 + random.Random(self.seed + len(head)).randrange(64, 2048)
        sent = 0
        try:
            # the response head says `Connection: close` too, so the client never reuses this connection
            chunk = b""
            while True:
                response_head, chunk = _read_head(upstream, chunk)
                if response_head is None:
                    raise OSError("the upstream closed before answering")
                if not response_head.startswith(b"HTTP/1.1 1"):
                    break
                client.sendall(response_head)  # `100 Continue`: the client waits for it to send the body
            chunk = _force_close(response_head) + chunk
            while True:
                if not chunk:
                    chunk = upstream.recv(65536)
                if not chunk:
                    break
                if limit is not None and sent + len(chunk) >= limit:
                    client.sendall(chunk[: max(1, limit - sent)])
                    self._reset(client)
                    upstream.close()
                    return
                client.sendall(chunk)
                sent += len(chunk)
                chunk = b""
        except OSError:
            self._reset(client)
            upstream.close()
            return
        upstream.close()
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.close()

    def _answer_slowdown(self, client: socket.socket, head: bytes, rest: bytes) -> None:
        # Read the request body first when the client is sending it (no 100-continue handshake):
        # closing with unread data would turn the answer into a reset.
        headers = head.lower()
        if b"expect: 100-continue" not in headers:
            length = _content_length(headers)
            remaining = max(0, length - len(rest))
            client.settimeout(10)
            try:
                while remaining > 0:
                    chunk = client.recv(min(65536, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            except OSError:
                client.close()
                return
        response = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                    + f"Content-Length: {len(SLOWDOWN_BODY)}\r\n\r\n".encode() + SLOWDOWN_BODY)
        try:
            client.sendall(response)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        client.close()


def _read_head(sock: socket.socket, data: bytes = b"") -> tuple[bytes | None, bytes]:
    """(head, the bytes read past it); `data`: bytes already read from `sock`."""
    sock.settimeout(60)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def _content_length(lower_head: bytes) -> int:
    for line in lower_head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1].strip())
    return 0


def _force_close(head: bytes) -> bytes:
    """An HTTP head with ``Connection: close``: one request per connection, so a response ends
    where the upstream closes and the client never reuses a connection the proxy will close."""
    lines = [line for line in head.split(b"\r\n") if line and not line.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while True:
            chunk = source.recv(65536)
            if not chunk:
                break
            target.sendall(chunk)
    except OSError:
        pass


@contextlib.contextmanager
def through(proxy: FaultyProxy):
    """This process's S3 clients (and the processes it starts) talk to S3 through `proxy`; yields
    the environment to give those processes."""
    import os

    from pipelines import storage

    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint_url
    storage.configure_s3(storage.S3Options())
    try:
        yield {**os.environ}
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved
        storage.configure_s3(storage.S3Options())


# --------------------------------------------------------------------------------------------
# Corrupted data at scale: a seeded corruptor of a synthetic YouTube-VIS split.
CORRUPTIONS = {
    # what the corruptor does -> the problem kind ingest must report for it
    "truncated_jpeg": "corrupt_frame",
    "bitflipped_jpeg": "corrupt_frame",
    "missing_frame": "missing_frame",
    "wrong_length_segmentations": "segmentation_count_mismatch",
    "wrong_size_rle": "invalid_segmentation",
    "unknown_category": "unknown_category",
    "duplicate_annotation_id": "duplicate_id",
}
FRAME_CORRUPTIONS = ("truncated_jpeg", "bitflipped_jpeg", "missing_frame")


@dataclass
class Corruption:
    kind: str
    video_id: int
    annotation_id: int | None = None
    frame: int | None = None
    file: str | None = None


def corrupt_split(annotations: str, frames_root: str, seed: int, per_kind: int) -> list[Corruption]:
    """Damage `per_kind` targets of each kind in CORRUPTIONS (local files), seeded. Every target is a
    different video, so that no damage hides another (a video with a broken frame is skipped whole,
    its annotations unread): the problems ingest reports must be exactly these.

    Bit flips go into the JPEG's markers (start of image, frame header): a flip inside the
    entropy-coded data decodes to a plausible image and no decoder can notice it."""
    import json
    import os

    rng = random.Random(seed)
    with open(annotations) as handle:
        data = json.load(handle)
    videos = {v["id"]: v for v in data["videos"]}
    by_video: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_video.setdefault(ann["video_id"], []).append(ann)
    annotated = sorted(v for v in videos if any(any(s for s in a["segmentations"]) for a in by_video.get(v, [])))
    needed = per_kind * len(CORRUPTIONS)
    if len(annotated) < needed:
        raise ValueError(f"corrupt_split: {len(annotated)} annotated videos, {needed} needed")
    targets = rng.sample(annotated, needed)
    done: list[Corruption] = []
    max_category = max(c["id"] for c in data["categories"])
    for k, kind in enumerate(sorted(CORRUPTIONS)):
        for video_id in targets[k * per_kind:(k + 1) * per_kind]:
            video = videos[video_id]
            if kind in FRAME_CORRUPTIONS:
                t = rng.randrange(len(video["file_names"]))
                path = os.path.join(frames_root, video["file_names"][t])
                with open(path, "rb") as handle:
                    jpeg = bytearray(handle.read())
                if kind == "truncated_jpeg":
                    with open(path, "wb") as handle:
                        handle.write(jpeg[: rng.randrange(len(jpeg) // 4, len(jpeg) // 2)])
                elif kind == "bitflipped_jpeg":
                    jpeg[rng.choice((0, 1))] ^= 1 << rng.randrange(8)  # SOI marker FF D8
                    with open(path, "wb") as handle:
                        handle.write(jpeg)
                else:
                    os.remove(path)
                done.append(Corruption(kind, video_id, frame=t, file=path))
                continue
            ann = rng.choice([a for a in by_video[video_id] if any(s for s in a["segmentations"])])
            if kind == "wrong_length_segmentations":
                ann["segmentations"] = ann["segmentations"][:-1]
            elif kind == "wrong_size_rle":
                t = next(i for i, s in enumerate(ann["segmentations"]) if s)
                h, w = ann["segmentations"][t]["size"]
                ann["segmentations"][t] = {"size": [h + 1, w], "counts": ann["segmentations"][t]["counts"]}
                done.append(Corruption(kind, video_id, ann["id"], frame=t))
                continue
            elif kind == "unknown_category":
                ann["category_id"] = max_category + 1 + rng.randrange(100)
            else:  # a second annotation takes this one's id: the later one is the duplicate
                others = [a for a in by_video[video_id] if a is not ann]
                if not others:
                    raise ValueError(f"corrupt_split: video {video_id} has one annotation; duplicate ids need two")
                later = max(ann, others[0], key=lambda a: data["annotations"].index(a))
                earlier = ann if later is not ann else others[0]
                later["id"] = earlier["id"]
                ann = earlier
            done.append(Corruption(kind, video_id, ann["id"]))
    with open(annotations, "w") as handle:
        json.dump(data, handle)
    return done

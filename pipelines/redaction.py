"""Secrets out of every text that leaves the program: errors, logs, printed output, MLflow.

One mechanism, applied where text leaves (standard library only, so the config loader and
`ctvis --help` can use it without heavy imports):

- values of keys named like secrets, in ``key=value`` / ``key: value`` / ``"key": "value"`` forms
  (``secret_access_key=...``, ``token=...``, ``password: ...``), including dotted config keys such
  as ``storage.s3.secret_access_key=...``;
- user information in URLs (``https://user:pass@host`` -> ``https://***@host``);
- the values of secret environment variables (AWS keys, session token, MLflow token/password) and
  every value registered with :func:`register_secret` (secrets given on a command line), wherever
  they appear.

`RedactingStream` wraps ``sys.stdout`` / ``sys.stderr`` in the ``ctvis`` command, so tracebacks,
Ray's forwarded worker logs and third-party prints are covered as well.
"""
from __future__ import annotations

import io
import os
import re
import threading
from typing import Callable, Iterable

MASK = "***"

# Environment variables whose values are secrets wherever they show up.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_TOKEN",
                   "MLFLOW_TRACKING_PASSWORD", "RAY_AUTH_TOKEN", "DATABRICKS_TOKEN")

# A key is secret when its last dotted part names a credential.
_SECRET_KEY = (r"(?:[A-Za-z0-9_.-]*[_.-])?(?:secret|password|passwd|token|access_key|api_key|credential|signature)"
               r"(?:[_-]?(?:id|key|access_key|value))?(?![A-Za-z0-9])")
_PATTERNS = (
    # user:password@ (or a lone token@) in URLs
    (re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@"), r"\g<scheme>" + MASK + "@"),
    # key=value (command-line overrides, query strings, env dumps); the value runs to a separator
    (re.compile(r"(?i)(?P<key>\b" + _SECRET_KEY + r")(?P<sep>\s*=\s*)(?P<value>[^\s&,;'\")\]}]+)"),
     r"\g<key>\g<sep>" + MASK),
    # key: value and "key": "value" (YAML, JSON, Python reprs)
    (re.compile(r"(?i)(?P<key>['\"]?\b" + _SECRET_KEY + r"['\"]?)(?P<sep>\s*:\s*)(?P<quote>['\"]?)"
                r"(?P<value>(?!\*\*\*)(?!None\b)(?!null\b)[^\s'\",}\]]+)"),
     r"\g<key>\g<sep>\g<quote>" + MASK),
)

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: object) -> None:
    """Mask `value` wherever it appears from now on (e.g. a secret given as a command-line override)."""
    text = str(value) if value is not None else ""
    if len(text) >= 4:
        with _lock:
            _registered.add(text)


def _known_secrets() -> Iterable[str]:
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            yield value
    with _lock:
        yield from sorted(_registered, key=len, reverse=True)


def redact(text: object) -> str:
    """`text` with every secret it holds replaced by ``***``."""
    text = str(text)
    for secret in _known_secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) config key names a secret: its value must never be shown."""
    return re.fullmatch(_SECRET_KEY, key.rsplit(".", 1)[-1], flags=re.I) is not None


def redact_override(text: str) -> str:
    """A ``key.sub=value`` override as it may be shown: the value masked when the key is a secret
    (the value is registered, so it is masked wherever else it appears)."""
    key, sep, value = text.partition("=")
    if sep and is_secret_key(key.strip()):
        register_secret(value)
        return f"{key}={MASK}"
    return redact(text)


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what is written to it before passing it on."""

    def __init__(self, inner: io.TextIOBase):
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._inner, "encoding", "utf-8")

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def install_redacting_streams() -> Callable[[], None]:
    """Wrap sys.stdout and sys.stderr so that nothing printed by this process shows a secret; returns
    a function that puts the original streams back."""
    import sys

    saved = {name: getattr(sys, name) for name in ("stdout", "stderr")}
    for name, stream in saved.items():
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))

    def restore() -> None:
        for name, stream in saved.items():
            setattr(sys, name, stream)

    return restore

"""Resumable, verified downloads from HTTP mirrors and Google Drive.

`download` tries each source in order and streams into ``<dest>.part`` next to the final file.
It resumes with HTTP Range requests, retries transient failures with exponential back-off and
rejects the HTML pages that file hosts serve instead of the file (quota, login, virus-scan
warnings). Only a file whose size and digests match is renamed to its final name, so a name
in the data folder always means a complete, verified file.

Sources are ``http(s)://`` URLs or ``gdrive:<file id>`` (fetched with the optional `gdown`).

No source can fill the disk: an HTTP body is cut off (and its part file dropped) once the file
would outgrow its registry size, or `MAX_UNSIZED_BYTES` when the registry gives none. gdown
writes by itself, so a Drive file is checked against the same cap only when it ends.
Loopback mirrors (127.0.0.1, ::1, localhost) are always fetched directly: a proxy from the
environment cannot reach this machine's loopback.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import inspect
import ipaddress
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from starcli import __version__
from starcli.errors import ChecksumError, DownloadError
from starcli.progress import Progress, Task, log, progress_task

__all__ = ["download", "file_url", "verify_file"]

CHUNK = 1 << 20
USER_AGENT = f"starcli/{__version__}"
# How much of a file's head is sniffed for HTML and quota pages.
_SNIFF_BYTES = 64 * 1024
# Statuses worth another try (with 5xx). Other 4xx (404, 403, 410, ...) mean the file is
# not there or not for us, so the next source is tried at once.
_RETRY_STATUS = {408, 425, 429}
_HINT = "Use --mirror BASE_URL or `starcli fetch DATASET --from PATH`."
# Largest file accepted when the registry gives no size (the biggest such file it lists, the
# official 256 px StarGAN weights zip, is a few hundred MB). Files with a size are capped at it.
MAX_UNSIZED_BYTES = 4 << 30

# Back-off sleeps go through this name so tests can make them instant.
_sleep = time.sleep


class _SourceFailed(Exception):
    """This source cannot deliver the file; move on to the next one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Transient(Exception):
    """A failure that another attempt at the same source may get past."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # Set when the failed attempt still added bytes to the part file.
        self.progressed = False


# --------------------------------------------------------------------------- verification


def _digests(path: Path, want_md5: bool, want_sha256: bool, task: Task) -> tuple[str, str]:
    md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
    sha = hashlib.sha256() if want_sha256 else None
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            if md5 is not None:
                md5.update(block)
            if sha is not None:
                sha.update(block)
            task.advance(len(block))
    return (md5.hexdigest() if md5 else "", sha.hexdigest() if sha else "")


def _mismatch(path: Path, size: int | None, md5: str | None, sha256: str | None,
              progress: Progress | None) -> tuple[str, str, str] | None:
    """The first check that fails as (what, expected, actual), or None when all pass."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return "size", f"{size} bytes", f"{actual_size} bytes"
    if not md5 and not sha256:
        return None
    with progress_task(progress, f"verify {path.name}", total=actual_size, unit="bytes") as t:
        got_md5, got_sha = _digests(path, bool(md5), bool(sha256), t)
    if md5 and got_md5 != md5.lower():
        return "md5", md5.lower(), got_md5
    if sha256 and got_sha != sha256.lower():
        return "sha256", sha256.lower(), got_sha
    return None


def verify_file(path: Path, *, size: int | None = None, md5: str | None = None,
                sha256: str | None = None, progress: Progress | None = None) -> None:
    """Check `path` against the expected size and digests; raise ChecksumError on a mismatch.

    Both digests are computed in one pass over the file. Checks that are None are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ChecksumError(f"{path} does not exist; run `starcli fetch` to download it.")
    bad = _mismatch(path, size, md5, sha256, progress)
    if bad is not None:
        what, expected, actual = bad
        raise ChecksumError(
            f"{path} has the wrong {what} (expected {expected}, got {actual}); delete it and "
            "re-run `starcli fetch`, or download it from another host with --mirror BASE_URL."
        )


# --------------------------------------------------------------------------- sniffing


def _sniff(head: bytes, expect: str | None) -> str | None:
    """Why `head` cannot be the start of the wanted file, or None when it looks fine."""
    text = head[:_SNIFF_BYTES].lower()
    stripped = text.lstrip(b"\xef\xbb\xbf \t\r\n")
    for phrase, reason in (
        (b"quota exceeded", "quota exceeded (the host served a web page instead of the file)"),
        (b"too many users", "too many users (the host served a web page instead of the file)"),
        (b"virus scan warning",
         "virus-scan warning (the host served a web page instead of the file)"),
    ):
        # Only an HTML page counts: the phrases are plausible inside a real text file.
        if phrase in text and (b"<html" in text or b"<!doctype" in text):
            return reason
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "the host served a web page instead of the file (quota or login page)"
    if expect == "zip" and not head.startswith(b"PK\x03\x04"):
        return "not a zip file (bad first bytes)"
    if expect == "text" and b"\x00" in text:
        return "not a text file (binary data)"
    return None


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(_SNIFF_BYTES)


# --------------------------------------------------------------------------- HTTP


def file_url(base: str, name: str) -> str:
    """The URL of file `name` on a mirror whose folder URL is `base`."""
    return base.rstrip("/") + "/" + urllib.parse.quote(name)


def _write_chunk(f: BinaryIO, data: bytes) -> None:
    f.write(data)


def _disk_error(part: Path, exc: OSError) -> DownloadError:
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        why = "no space left on device"
    return DownloadError(
        f"Could not write {part}: {why}; free space on {part.parent} (or fix its permissions) "
        "and re-run `starcli fetch` to resume."
    )


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection dropped mid-file"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionError):
        return "connection reset"
    return type(exc).__name__


def _content_range_total(value: str | None) -> int | None:
    # "bytes 100-199/200" or "bytes */200"
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(value: str | None) -> int | None:
    if not value:
        return None
    spec = value.strip().removeprefix("bytes").strip()
    start = spec.split("-", 1)[0]
    return int(start) if start.isdigit() else None


def _too_long(size: int | None, cap: int) -> str:
    if size is not None:
        return f"sent more than the expected {cap} bytes"
    return (f"sent more than {cap} bytes, the limit for a file of unknown size (give its size "
            "in datasets.toml)")


def _http_attempt(opener: urllib.request.OpenerDirector, url: str, part: Path, size: int | None,
                  expect: str | None, timeout: float, task: Task, cap: int) -> None:
    """One GET of `url` into `part`, resuming from its current length; nothing past `cap`
    bytes is written (the part is dropped instead)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    task.update(completed=offset)
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            total = _content_range_total(exc.headers.get("Content-Range"))
            if total is not None and total != offset:
                # The part is longer than the remote file, so it is not a prefix of it.
                part.unlink()
                raise _Transient(f"partial file does not match ({offset} vs {total} bytes)"
                                 ) from None
            return  # the part already holds the whole file; verification decides
        if exc.code in _RETRY_STATUS or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code}") from None
        raise _SourceFailed(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, str):  # "no host given", "unknown url type", ...
            raise _SourceFailed(f"bad URL ({reason})") from None
        if isinstance(reason, socket.gaierror):
            raise _SourceFailed("host not found") from None
        if isinstance(reason, ssl.SSLError):
            raise _SourceFailed(f"TLS error ({type(reason).__name__})") from None
        raise _Transient(_network_reason(exc)) from None
    except ValueError:  # http.client.InvalidURL and friends
        raise _SourceFailed("bad URL") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(_network_reason(exc)) from None

    with response:
        status = response.status
        if status == 206:
            if _content_range_start(response.headers.get("Content-Range")) != offset:
                part.unlink()
                raise _Transient("server sent the wrong byte range")
        elif status == 200:
            offset = 0  # the server ignored Range: start over
            task.update(completed=0)
        else:
            raise _SourceFailed(f"HTTP {status}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if size is None and expected is not None and offset + expected > cap:
            raise _SourceFailed(_too_long(size, cap).replace("sent", "offers"))
        received = 0
        f = None
        over = False
        dropped: http.client.IncompleteRead | None = None
        try:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as exc:
                    if not exc.partial:
                        raise _Transient(_network_reason(exc)) from None
                    chunk, dropped = exc.partial, exc  # keep what did arrive, then retry
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(_network_reason(exc)) from None
                if f is None:
                    # Decide on the first bytes, before anything is written; a partial
                    # file from an earlier source is kept, as it may still be good.
                    if status == 200:
                        reason = _sniff(chunk, expect)
                        if reason is not None:
                            raise _SourceFailed(reason)
                    if size is not None and expected is not None and offset + expected != size:
                        raise _SourceFailed(
                            f"server offers {offset + expected} bytes, expected {size}")
                    try:
                        f = open(part, "ab" if status == 206 else "wb")
                    except OSError as exc:
                        raise _disk_error(part, exc) from exc
                if not chunk:
                    break
                if offset + received + len(chunk) > cap:
                    over = True  # a chunked body (no Content-Length) that never ends
                    break
                try:
                    _write_chunk(f, chunk)
                except OSError as exc:
                    raise _disk_error(part, exc) from exc
                received += len(chunk)
                task.advance(len(chunk))
                if dropped is not None:
                    raise _Transient(_network_reason(dropped))
        finally:
            if f is not None:
                f.close()
        if over:
            part.unlink(missing_ok=True)
            raise _SourceFailed(_too_long(size, cap))
        # http.client returns b"" (no error) when a Content-Length body is cut short.
        if expected is not None and received < expected:
            raise _Transient("connection dropped mid-file")


def _is_loopback(host: str) -> bool:
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    # Fresh each time, so proxy settings come from the environment as it is now.
    if _is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _fetch_http(url: str, part: Path, size: int | None, expect: str | None, timeout: float,
                task: Task, cap: int) -> None:
    before = part.stat().st_size if part.exists() else 0
    try:
        _http_attempt(_opener(url), url, part, size, expect, timeout, task, cap)
    except _Transient as exc:
        exc.progressed = (part.stat().st_size if part.exists() else 0) > before
        raise


# --------------------------------------------------------------------------- Google Drive


def _gdrive_reason(exc: BaseException) -> tuple[str, bool]:
    """(short reason, transient?) for an exception raised by gdown or requests."""
    import requests  # gdown depends on it

    text = str(exc).lower()
    name = type(exc).__name__
    if name == "FileURLRetrievalError":
        if "too many users" in text:
            return "too many users (Drive's daily download limit; try again in 24 h)", False
        if "quota" in text:
            return "quota exceeded (Drive's daily download limit)", False
        return "cannot get the file link (access restricted or removed)", False
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        return f"HTTP {code}", code == 429 or code >= 500
    if isinstance(exc, requests.Timeout):
        return "timed out", True
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return "connection error", True
    if name == "DownloadError":
        if "multiple temporary files" in text:
            return "several partial gdown files; delete the *.part files", False
        return "transfer cut short", True
    if isinstance(exc, requests.RequestException):
        return name, True
    detail = " ".join(str(exc).split())[:80]
    return (f"{name}: {detail}" if detail else name), False


def _gdown_kwargs(func, wanted: dict) -> dict:
    """The options in `wanted` that this gdown version accepts (its API grew over time)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    return {k: v for k, v in wanted.items() if k in params}


def _fetch_gdrive(file_id: str, part: Path, size: int | None, timeout: float,
                  task: Task, cap: int) -> None:
    try:
        import gdown
    except ImportError:
        raise _SourceFailed("gdown is not installed (pip install gdown)") from None
    if part.exists() and (size is None or part.stat().st_size != size):
        # gdown keeps its own partial files and would take an existing output as finished.
        part.unlink()
    task.update(completed=0)

    def on_progress(done: int, total: int | None) -> None:
        task.update(completed=done)

    extra = _gdown_kwargs(gdown.download, {"progress": on_progress, "timeout": timeout})
    try:
        gdown.download(id=file_id, output=str(part), quiet=True, resume=True, **extra)
    except Exception as exc:
        if isinstance(exc, OSError) and not _is_requests_error(exc):
            raise _disk_error(part, exc) from exc  # gdown could not write the file
        reason, transient = _gdrive_reason(exc)
        if transient:
            raise _Transient(reason) from None
        raise _SourceFailed(reason) from None
    if not part.exists():
        raise _SourceFailed("gdown reported success but wrote no file")
    if part.stat().st_size > cap:
        part.unlink()
        raise _SourceFailed(_too_long(size, cap))


def _is_requests_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.RequestException)


# --------------------------------------------------------------------------- driver


def _label(source: str) -> str:
    if source.startswith("gdrive:"):
        return "gdrive"
    return urllib.parse.urlsplit(source).netloc or source


def _try_source(source: str, part: Path, *, size: int | None, expect: str | None,
                timeout: float, retries: int, backoff: float, task: Task,
                progress: Progress | None, cap: int) -> None:
    """Get the whole file from one source into `part`, retrying transient failures."""
    if source.startswith("gdrive:"):
        file_id = source.removeprefix("gdrive:").strip()
        if not file_id:
            raise _SourceFailed("empty Google Drive id")

        def fetch() -> None:
            _fetch_gdrive(file_id, part, size, timeout, task, cap)
    elif urllib.parse.urlsplit(source).scheme in ("http", "https"):
        def fetch() -> None:
            _fetch_http(source, part, size, expect, timeout, task, cap)
    else:
        raise _SourceFailed("unsupported source (want http(s):// or gdrive:ID)")

    failures = 0
    while True:
        try:
            fetch()
            return
        except _Transient as exc:
            if exc.progressed:
                # Bytes arrived before the drop, so this try was not wasted: resume after
                # the shortest pause without using up a retry.
                log(progress, f"{_label(source)}: {exc.reason}; resuming {part.name}")
                _sleep(backoff)
                continue
            failures += 1
            if failures > retries:
                raise _SourceFailed(f"{exc.reason} ({failures} tries)") from None
            delay = backoff * 2 ** (failures - 1)
            log(progress, f"{_label(source)}: {exc.reason}; retrying in {delay:.1f} s")
            _sleep(delay)


def download(sources: Sequence[str], dest: Path, *, size: int | None = None,
             md5: str | None = None, sha256: str | None = None, expect: str | None = None,
             progress: Progress | None = None, retries: int = 4, backoff: float = 0.5,
             timeout: float = 30.0) -> str:
    """Download one file to `dest` from the first source that delivers it intact.

    Returns the source that worked. `expect` is "zip", "text" or None and drives the check
    that rejects web pages served in place of the file. Raises DownloadError when every
    source fails (the message lists each one's failure), or at once when the disk cannot be
    written. A partial ``<dest>.part`` is kept after network failures so a re-run resumes.
    At most `size` bytes (`MAX_UNSIZED_BYTES` without a size) are written for one file.
    """
    if expect not in (None, "zip", "text"):
        raise ValueError(f"expect must be 'zip', 'text' or None, not {expect!r}")
    dest = Path(dest)
    if not sources:
        raise DownloadError(f"No download source is known for {dest.name}. {_HINT}")
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(part, exc) from exc

    cap = size if size is not None else MAX_UNSIZED_BYTES
    failures: list[str] = []
    with progress_task(progress, f"download {dest.name}", total=size, unit="bytes") as task:
        for source in sources:
            label = _label(source)
            if size is not None and part.exists() and part.stat().st_size > size:
                part.unlink()  # longer than the file can be: not a prefix of it
            try:
                _try_source(source, part, size=size, expect=expect, timeout=timeout,
                            retries=retries, backoff=backoff, task=task, progress=progress,
                            cap=cap)
            except _SourceFailed as exc:
                failures.append(f"{label}: {exc.reason}")
                log(progress, f"{label}: {exc.reason}")
                continue
            reason = _sniff(_read_head(part), expect)
            if reason is None:
                bad = _mismatch(part, size, md5, sha256, progress)
                if bad is not None:
                    reason = f"{bad[0]} mismatch"
            if reason is not None:
                part.unlink(missing_ok=True)
                failures.append(f"{label}: {reason}")
                log(progress, f"{label}: {reason}")
                continue
            os.replace(part, dest)
            return source
    raise DownloadError(f"Could not download {dest.name}: " + "; ".join(failures) + f". {_HINT}")

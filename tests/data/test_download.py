"""download(): resuming, retries, fall-through and verification against loopback servers."""

from __future__ import annotations

import errno
import hashlib
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from starcli import __version__
from starcli.data import download as dl
from starcli.errors import ChecksumError, DownloadError

MiB = 1 << 20
DATA = random.Random(0).randbytes(3 * MiB + 12345)  # several 1 MiB chunks, odd tail
MD5 = hashlib.md5(DATA).hexdigest()
SHA = hashlib.sha256(DATA).hexdigest()
QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
              b"<body>Too many users have viewed or downloaded this file recently.</body></html>")


# --------------------------------------------------------------------------- test server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, closed after the body

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server.owner
        with server.lock:
            server.log.append((self.path, dict(self.headers)))
            n = sum(1 for path, _ in server.log if path == self.path)
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self, n)

    def log_message(self, *args):
        pass


class Server:
    def __init__(self):
        self.routes = {}
        self.log = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        # A short poll interval keeps shutdown() (and so each test) fast.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                       daemon=True)
        self.thread.start()

    def add(self, path, route):
        self.routes[path] = route
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def hits(self, path):
        return [headers for p, headers in self.log if p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve(data, *, ranges=True, drop_after=None, fail_first=(), delay_first=0.0,
          content_type="application/octet-stream"):
    """A route serving `data`. The first len(fail_first) requests get those statuses; the
    next one sleeps `delay_first` seconds and, with `drop_after`, announces the full length
    but closes the connection after that many bytes."""

    def route(h, n):
        if n <= len(fail_first):
            h.send_error(fail_first[n - 1])
            return
        first_good = n == len(fail_first) + 1
        if first_good and delay_first:
            time.sleep(delay_first)
        start = 0
        header = h.headers.get("Range")
        if ranges and header:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if first_good and drop_after is not None:
            h.wfile.write(body[:drop_after])
            h.wfile.flush()
            return  # the connection closes short of Content-Length
        h.wfile.write(body)

    return route


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    """Record back-off sleeps instead of sleeping; keep loopback traffic off any proxy."""
    sleeps = []
    monkeypatch.setattr(dl, "_sleep", sleeps.append)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    return sleeps


class RecTask:
    def __init__(self, description, total, unit):
        self.description, self.total, self.unit = description, total, unit
        self.completed = 0
        self.updates = []

    def advance(self, n=1):
        self.completed += n

    def update(self, *, completed=None, total=None, description=None):
        if completed is not None:
            self.completed = completed
            self.updates.append(completed)


class RecProgress:
    def __init__(self):
        self.tasks, self.messages = [], []

    def start_task(self, description, total=None, unit="it"):
        self.tasks.append(RecTask(description, total, unit))
        return self.tasks[-1]

    def stop_task(self, task):
        pass

    def log(self, message):
        self.messages.append(message)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- HTTP


def test_plain_download_is_verified_and_reports_progress(server, tmp_path, no_wait):
    url = server.add("/f.bin", serve(DATA))
    dest = tmp_path / "f.bin"
    progress = RecProgress()
    used = dl.download([url], dest, size=len(DATA), md5=MD5, sha256=SHA, progress=progress)
    assert used == url
    assert dest.read_bytes() == DATA
    assert leftovers(tmp_path) == ["f.bin"]
    assert server.hits("/f.bin")[0]["User-Agent"] == f"starcli/{__version__}"
    task = next(t for t in progress.tasks if t.description == "download f.bin")
    assert (task.total, task.unit, task.completed) == (len(DATA), "bytes", len(DATA))
    assert no_wait == []


def test_dropped_connection_resumes_with_range(server, tmp_path):
    cut = MiB + MiB // 2
    url = server.add("/f.bin", serve(DATA, drop_after=cut))
    dest = tmp_path / "f.bin"
    assert dl.download([url], dest, size=len(DATA), md5=MD5, sha256=SHA) == url
    assert dest.read_bytes() == DATA
    hits = server.hits("/f.bin")
    assert len(hits) == 2
    assert "Range" not in hits[0]
    assert hits[1]["Range"] == f"bytes={cut}-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.add("/f.bin", serve(DATA, ranges=False, drop_after=MiB // 2))
    dest = tmp_path / "f.bin"
    progress = RecProgress()
    dl.download([url], dest, size=len(DATA), md5=MD5, progress=progress)
    assert dest.read_bytes() == DATA
    hits = server.hits("/f.bin")
    assert len(hits) == 2 and hits[1]["Range"] == f"bytes={MiB // 2}-"
    # The bar went back to 0 when the server answered 200 instead of 206.
    assert 0 in progress.tasks[0].updates[1:]


def test_chunked_body_cut_short_is_resumed(server, tmp_path):
    def chunked_then_drop(h, n):
        if n > 1:
            return serve(DATA)(h, n)
        h.protocol_version = "HTTP/1.1"
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.write(b"%x\r\n" % MiB + DATA[:MiB] + b"\r\n")
        h.wfile.write(b"%x\r\n" % MiB + DATA[MiB:MiB + 100])  # IncompleteRead on the client
        h.wfile.flush()
        h.close_connection = True

    url = server.add("/f.bin", chunked_then_drop)
    dest = tmp_path / "f.bin"
    progress = RecProgress()
    dl.download([url], dest, size=len(DATA), sha256=SHA, progress=progress)
    assert dest.read_bytes() == DATA
    assert server.hits("/f.bin")[1]["Range"] == f"bytes={MiB}-"
    assert any("connection dropped mid-file" in m for m in progress.messages)


def test_quota_page_is_rejected_and_next_source_used(server, tmp_path):
    bad = server.add("/quota", serve(QUOTA_PAGE, content_type="text/html"))
    good = server.add("/f.bin", serve(DATA))
    dest = tmp_path / "f.bin"
    progress = RecProgress()
    assert dl.download([bad, good], dest, size=len(DATA), md5=MD5, progress=progress) == good
    assert dest.read_bytes() == DATA
    assert len(server.hits("/quota")) == 1
    assert any("quota exceeded" in m for m in progress.messages)


@pytest.mark.parametrize("page, expect, words", [
    (QUOTA_PAGE, "zip", "quota exceeded"),
    (b"<!doctype html><html><body>Sign in</body></html>", "zip", "web page instead of the file"),
    (b"\n<html><title>Google Drive - Virus scan warning</title></html>", None, "virus-scan"),
    (b"just some text, not a zip", "zip", "not a zip"),
], ids=["quota", "login", "virus-scan", "not-zip"])
def test_web_pages_are_never_saved(server, tmp_path, page, expect, words):
    url = server.add("/p", serve(page, content_type="text/html"))
    dest = tmp_path / "f.zip"
    with pytest.raises(DownloadError) as info:
        dl.download([url], dest, expect=expect)
    assert words in str(info.value)
    assert leftovers(tmp_path) == []


def test_zip_and_text_expectations_accept_real_files(server, tmp_path):
    zip_like = b"PK\x03\x04" + DATA[:1000]
    url_zip = server.add("/a.zip", serve(zip_like))
    url_txt = server.add("/a.txt", serve(b"202599\n5_o_Clock_Shadow Arched_Eyebrows\n"))
    dl.download([url_zip], tmp_path / "a.zip", expect="zip")
    dl.download([url_txt], tmp_path / "a.txt", expect="text")
    assert (tmp_path / "a.zip").read_bytes() == zip_like
    assert leftovers(tmp_path) == ["a.txt", "a.zip"]


def test_wrong_md5_falls_through_then_errors(server, tmp_path):
    wrong = bytes(len(DATA))
    bad = server.add("/bad", serve(wrong))
    good = server.add("/good", serve(DATA))
    dest = tmp_path / "f.bin"
    assert dl.download([bad, good], dest, size=len(DATA), md5=MD5) == good
    assert dest.read_bytes() == DATA

    dest2 = tmp_path / "g.bin"
    with pytest.raises(DownloadError) as info:
        dl.download([bad], dest2, size=len(DATA), md5=MD5)
    assert "g.bin" in str(info.value) and "md5 mismatch" in str(info.value)
    assert not dest2.exists() and not (tmp_path / "g.bin.part").exists()


def test_wrong_size_announced_by_server_skips_source(server, tmp_path):
    url = server.add("/short", serve(DATA[:100]))
    with pytest.raises(DownloadError, match="server offers 100 bytes"):
        dl.download([url], tmp_path / "f.bin", size=len(DATA))
    assert leftovers(tmp_path) == []


def test_404_fails_fast_without_retries(server, tmp_path, no_wait):
    missing = server.add("/gone", serve(DATA, fail_first=(404,) * 10))
    good = server.add("/f.bin", serve(DATA))
    assert dl.download([missing, good], tmp_path / "f.bin", md5=MD5) == good
    assert len(server.hits("/gone")) == 1
    assert no_wait == []


def test_503_is_retried_with_exponential_backoff(server, tmp_path, no_wait):
    url = server.add("/f.bin", serve(DATA, fail_first=(503, 503)))
    assert dl.download([url], tmp_path / "f.bin", md5=MD5, backoff=0.5) == url
    assert len(server.hits("/f.bin")) == 3
    assert no_wait == [0.5, 1.0]


def test_timeout_is_retried(server, tmp_path, no_wait):
    url = server.add("/slow", serve(DATA, delay_first=0.6))
    dest = tmp_path / "f.bin"
    assert dl.download([url], dest, md5=MD5, timeout=0.15) == url
    assert dest.read_bytes() == DATA
    assert len(no_wait) == 1


def test_all_sources_fail_with_one_line_summary(server, tmp_path, no_wait):
    a = server.add("/a", serve(DATA, fail_first=(404,) * 10))
    b = server.add("/b", serve(DATA, fail_first=(429,) * 10))
    c = server.add("/c", serve(QUOTA_PAGE))
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as info:
        dl.download([a, b, "ftp://example.invalid/f.bin", c], dest, retries=2)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("Could not download f.bin:")
    for part in ("HTTP 404", "HTTP 429 (3 tries)", "unsupported source", "quota exceeded",
                 "--mirror", "--from"):
        assert part in msg
    assert len(server.hits("/b")) == 3 and no_wait == [0.5, 1.0]
    assert leftovers(tmp_path) == []


def test_partial_file_is_resumed(server, tmp_path):
    url = server.add("/f.bin", serve(DATA))
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(DATA[:MiB])
    progress = RecProgress()
    dl.download([url], dest, size=len(DATA), md5=MD5, sha256=SHA, progress=progress)
    assert dest.read_bytes() == DATA
    assert [h["Range"] for h in server.hits("/f.bin")] == [f"bytes={MiB}-"]
    assert progress.tasks[0].updates[0] == MiB  # the bar starts at the resumed offset


def test_complete_partial_file_gets_416_and_is_verified(server, tmp_path):
    url = server.add("/f.bin", serve(DATA))
    (tmp_path / "f.bin.part").write_bytes(DATA)
    dl.download([url], tmp_path / "f.bin", size=len(DATA), md5=MD5)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert len(server.hits("/f.bin")) == 1
    assert leftovers(tmp_path) == ["f.bin"]


def test_bad_partial_file_is_dropped_and_next_source_starts_over(server, tmp_path):
    first = server.add("/one", serve(DATA))
    second = server.add("/two", serve(DATA))
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)  # not a prefix of the file
    assert dl.download([first, second], tmp_path / "f.bin", md5=MD5) == second
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert "Range" not in server.hits("/two")[0]


def test_disk_full_stops_with_free_space_hint(server, tmp_path, monkeypatch):
    a = server.add("/a", serve(DATA))
    b = server.add("/b", serve(DATA))

    def full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "_write_chunk", full)
    with pytest.raises(DownloadError) as info:
        dl.download([a, b], tmp_path / "f.bin", md5=MD5)
    msg = str(info.value)
    assert f"free space on {tmp_path}" in msg and "f.bin.part" in msg and "\n" not in msg
    assert server.hits("/b") == []  # another source cannot help a full disk
    assert not (tmp_path / "f.bin").exists()


def test_no_sources_and_bad_expect(tmp_path):
    with pytest.raises(DownloadError, match="--mirror"):
        dl.download([], tmp_path / "f.bin")
    with pytest.raises(ValueError):
        dl.download(["http://127.0.0.1:9/x"], tmp_path / "f.bin", expect="tar")


def test_malformed_url_fails_fast(tmp_path, no_wait):
    with pytest.raises(DownloadError, match="bad URL"):
        dl.download(["http:///no-host"], tmp_path / "f.bin")
    assert no_wait == []


def test_file_url():
    assert dl.file_url("https://m.example/celeba/", "list attr.txt") == \
        "https://m.example/celeba/list%20attr.txt"
    assert dl.file_url("https://m.example/celeba", "img_align_celeba.zip") == \
        "https://m.example/celeba/img_align_celeba.zip"


# --------------------------------------------------------------------------- verify_file


def test_verify_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    dl.verify_file(path, size=len(DATA), md5=MD5, sha256=SHA.upper())
    dl.verify_file(path, size=None, md5=None, sha256=None)
    for kwargs, what in (({"size": 5}, "size"), ({"md5": "0" * 32}, "md5"),
                         ({"md5": MD5, "sha256": "0" * 64}, "sha256")):
        with pytest.raises(ChecksumError) as info:
            dl.verify_file(path, **{"size": None, "md5": None, "sha256": None, **kwargs})
        msg = str(info.value)
        assert str(path) in msg and f"wrong {what}" in msg and "--mirror" in msg
        assert "starcli fetch" in msg and "\n" not in msg
    with pytest.raises(ChecksumError, match="does not exist"):
        dl.verify_file(tmp_path / "nope", size=1, md5=None, sha256=None)


# --------------------------------------------------------------------------- Google Drive


@pytest.fixture
def fake_gdown(monkeypatch):
    gdown = pytest.importorskip("gdown")
    calls = []

    def install(behaviour):
        def fake(*args, **kwargs):
            calls.append(kwargs)
            return behaviour(len(calls), kwargs)

        monkeypatch.setattr(gdown, "download", fake)
        return calls

    return install


def _gdown_error(name, message):
    import gdown.exceptions

    return getattr(gdown.exceptions, name)(message)


@pytest.mark.parametrize("exc, words", [
    (("FileURLRetrievalError", "Failed to retrieve file url: Too many users have viewed or "
      "downloaded this file recently."), "gdrive: too many users"),
    (("FileURLRetrievalError", "Google Drive - Quota exceeded"), "gdrive: quota exceeded"),
    (("FileURLRetrievalError", "Cannot retrieve the public link of the file."),
     "gdrive: cannot get the file link"),
], ids=["too-many-users", "quota", "no-link"])
def test_gdrive_errors_are_mapped(fake_gdown, tmp_path, exc, words, no_wait):
    calls = fake_gdown(lambda n, kw: (_ for _ in ()).throw(_gdown_error(*exc)))
    with pytest.raises(DownloadError) as info:
        dl.download(["gdrive:abc123"], tmp_path / "f.zip", expect="zip")
    assert words in str(info.value) and "\n" not in str(info.value)
    assert len(calls) == 1 and no_wait == []  # not worth retrying
    assert calls[0]["id"] == "abc123" and calls[0]["resume"] is True
    assert calls[0]["output"] == str(tmp_path / "f.zip.part")


def test_gdrive_transient_errors_are_retried(fake_gdown, tmp_path, no_wait):
    import requests

    def behaviour(n, kw):
        if n < 3:
            raise requests.ConnectionError("reset")
        with open(kw["output"], "wb") as f:
            f.write(DATA)
        kw["progress"](len(DATA), len(DATA))
        return kw["output"]

    calls = fake_gdown(behaviour)
    progress = RecProgress()
    assert dl.download(["gdrive:abc"], tmp_path / "f.bin", md5=MD5,
                       progress=progress) == "gdrive:abc"
    assert len(calls) == 3 and no_wait == [0.5, 1.0]
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert progress.tasks[0].completed == len(DATA)


def test_gdrive_quota_page_falls_through_to_mirror(fake_gdown, server, tmp_path):
    def writes_page(n, kw):
        with open(kw["output"], "wb") as f:
            f.write(QUOTA_PAGE)
        return kw["output"]

    fake_gdown(writes_page)
    good = server.add("/f.bin", serve(DATA))
    assert dl.download(["gdrive:abc", good], tmp_path / "f.bin", md5=MD5) == good
    assert leftovers(tmp_path) == ["f.bin"]


def test_gdrive_disk_full_stops(fake_gdown, tmp_path):
    fake_gdown(lambda n, kw: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(DownloadError, match="free space on"):
        dl.download(["gdrive:abc", "http://127.0.0.1:9/never"], tmp_path / "f.bin")


# --------------------------------------------------------------------------- byte cap


def _endless_chunked(h, n):
    """A chunked body (no Content-Length) that keeps going: 8 MiB of it, more than any cap."""
    h.protocol_version = "HTTP/1.1"
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    block = b"z" * (256 * 1024)
    try:
        for _ in range(32):
            h.wfile.write(b"%x\r\n" % len(block) + block + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass  # the client hung up at its cap
    h.close_connection = True


def test_chunked_body_longer_than_the_expected_size_is_cut_off(server, tmp_path, monkeypatch):
    written = []
    real_write = dl._write_chunk
    monkeypatch.setattr(dl, "_write_chunk", lambda f, data: (written.append(len(data)),
                                                             real_write(f, data)))
    url = server.add("/f.bin", _endless_chunked)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="more than the expected 1048576 bytes"):
        dl.download([url], dest, size=MiB)
    assert sum(written) <= MiB  # the disk never held more than the file can be
    assert leftovers(tmp_path) == []  # nothing under the final name, no .part either


def test_size_less_file_is_capped_at_the_stated_maximum(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "MAX_UNSIZED_BYTES", 2 * MiB)
    url = server.add("/f.bin", _endless_chunked)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="more than 2097152 bytes"):
        dl.download([url], dest)
    assert leftovers(tmp_path) == []


def test_cap_lets_a_size_less_file_under_it_through(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "MAX_UNSIZED_BYTES", len(DATA))
    url = server.add("/f.bin", serve(DATA))
    assert dl.download([url], tmp_path / "f.bin", md5=MD5) == url
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_resumed_body_is_capped_too(server, tmp_path):
    def too_long_206(h, n):
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {MiB}-{4 * MiB - 1}/{4 * MiB}")
        h.end_headers()  # no Content-Length: only the cap stops it
        try:
            h.wfile.write(b"y" * (3 * MiB))
        except OSError:
            pass

    url = server.add("/f.bin", too_long_206)
    (tmp_path / "f.bin.part").write_bytes(DATA[:MiB])
    with pytest.raises(DownloadError, match="more than the expected"):
        dl.download([url], tmp_path / "f.bin", size=2 * MiB)
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- proxies


def test_loopback_mirror_is_never_sent_through_a_proxy(server, tmp_path, monkeypatch, no_wait):
    # A proxy set in the user's (or CI's) shell cannot reach this machine's loopback mirror.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    url = server.add("/f.bin", serve(DATA))
    assert dl.download([url], tmp_path / "f.bin", md5=MD5) == url
    assert no_wait == []


def test_size_less_file_announcing_too_much_is_refused_before_writing(server, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(dl, "MAX_UNSIZED_BYTES", MiB)
    url = server.add("/f.bin", serve(DATA))  # Content-Length says 3 MiB
    with pytest.raises(DownloadError, match="offers more than 1048576 bytes"):
        dl.download([url], tmp_path / "f.bin")
    assert leftovers(tmp_path) == []

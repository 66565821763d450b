"""`starcli fetch` end to end over a loopback HTTP server (no network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile

import pytest
from typer.testing import CliRunner

from starcli.cli import app
from starcli.data.fetch import FetchConfig, fetch

runner = CliRunner()

ATTR = "3\nBlack_Hair Male\n000001.jpg  1 -1\n000002.jpg -1  1\n000003.jpg  1  1\n"


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def server():
    """Serves `server.files` (name → bytes); records request paths."""
    files: dict[str, bytes] = {}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            data = files.get(self.path.lstrip("/").split("/")[-1])
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    httpd.files, httpd.seen = files, seen
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/data"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _entry(name: str, files: dict[str, bytes], image_count: int, md5_override=None) -> str:
    lines = [f'[{name}]', 'title = "tiny"', 'access = "download"', 'format = "celeba"',
             f"image_count = {image_count}", 'image_dir = "img_align_celeba"']
    for fname, data in files.items():
        md5 = (md5_override or {}).get(fname, hashlib.md5(data).hexdigest())
        lines += [f"[[{name}.files]]", f'name = "{fname}"',
                  f'kind = "{"archive" if fname.endswith(".zip") else "file"}"',
                  f"size = {len(data)}", f'md5 = "{md5}"',
                  f'sha256 = "{hashlib.sha256(data).hexdigest()}"']
    return "\n".join(lines) + "\n"


def _tiny_celeba(server) -> dict[str, bytes]:
    images = {f"img_align_celeba/00000{i}.jpg": b"\xff\xd8fake-jpeg-%d" % i for i in (1, 2, 3)}
    files = {"img_align_celeba.zip": _zip_bytes(images), "list_attr_celeba.txt": ATTR.encode()}
    server.files.update(files)
    return files


def test_fetch_downloads_verifies_extracts_and_skips(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url, "--json"])
    assert result.exit_code == 0, result.output
    raw = home / "raw" / "celeba"
    assert (raw / "list_attr_celeba.txt").read_text() == ATTR
    assert sorted(p.name for p in (raw / "img_align_celeba").iterdir()) == [
        "000001.jpg", "000002.jpg", "000003.jpg"]
    assert not list(raw.glob("*.part"))
    requests_before = len(server.seen)
    again = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    assert again.exit_code == 0, again.output
    assert len(server.seen) == requests_before  # verified files are not fetched again


def test_env_mirror_is_used(home, server, monkeypatch):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    monkeypatch.setenv("STARCLI_MIRROR", server.url)
    summary = fetch(FetchConfig(home=home, dataset="celeba"))
    assert all(f["source"].startswith(server.url) for f in summary["files"])


def test_checksum_mismatch_exits_1_naming_the_file(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(
        _entry("celeba", files, 3, md5_override={"list_attr_celeba.txt": "0" * 32}))
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    assert result.exit_code == 1
    assert "list_attr_celeba.txt" in result.output
    assert not (home / "raw" / "celeba" / "list_attr_celeba.txt").exists()


def test_image_count_is_checked(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 5))
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    assert result.exit_code == 1
    assert "expected 5" in result.output


def test_404_everywhere_is_exit_1_with_next_step(home, server):
    files = {"list_attr_celeba.txt": ATTR.encode()}  # registered but not served
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())  # rich wraps lines where the port's length puts them
    assert "404" in out and "--mirror" in out, out
    assert "Traceback" not in out


def test_from_local_folder_is_verified(home, tmp_path, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    src = tmp_path / "download"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    summary = fetch(FetchConfig(home=home, dataset="celeba", source=src))
    statuses = {f["file"]: f["status"] for f in summary["files"]}
    assert statuses == {"img_align_celeba.zip": "verified", "list_attr_celeba.txt": "verified"}
    assert (home / "raw" / "celeba" / "img_align_celeba" / "000002.jpg").is_file()
    assert server.seen == []


def test_rafd_from_zip_parses_and_skips(home, tmp_path):
    names = ["Rafd090_07_Caucasian_female_happy_frontal.jpg",
             "Rafd045_12_Moroccan_male_angry_left.jpg",
             "Rafd090_07_Caucasian_female_grumpy_frontal.jpg",  # unknown expression
             "notes.txt"]
    archive = tmp_path / "RaFD.zip"
    archive.write_bytes(_zip_bytes({f"RaFD/{n}": b"x" for n in names}))
    result = runner.invoke(app, ["fetch", "rafd", "--from", str(archive), "--json"])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["skipped"] == 2
    reasons = {s["file"]: s["reason"] for s in summary["skipped_files"]}
    assert "grumpy" in reasons["RaFD/Rafd090_07_Caucasian_female_grumpy_frontal.jpg"]
    index = (home / "raw" / "rafd" / "rafd_index.csv").read_text().splitlines()
    assert index[0] == "file,angle,subject,ethnicity,gender,expression,gaze"
    assert "Rafd045_12_Moroccan_male_angry_left.jpg,45,12,Moroccan,male,angry,left" in index


def test_rafd_from_folder_with_no_rafd_names_fails(home, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "face.jpg").write_bytes(b"x")
    result = runner.invoke(app, ["fetch", "rafd", "--from", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "RaFD naming pattern" in result.output


def test_traversal_archive_from_is_refused(home, tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"../../evil.jpg": b"x"}))
    result = runner.invoke(app, ["fetch", "rafd", "--from", str(archive)])
    assert result.exit_code == 1
    assert not (tmp_path / "evil.jpg").exists()
    assert not (home.parent / "evil.jpg").exists()


def test_fetch_demo_generates_both_sets_and_skips_when_done(home):
    result = runner.invoke(app, ["fetch", "demo", "--count", "40", "--subjects", "2", "--json"])
    assert result.exit_code == 0, result.output
    import json

    parts = {p["dataset"]: p for p in json.loads(result.stdout)["parts"]}
    assert parts["demo-celeba"]["images"] == 40
    assert parts["demo-rafd"]["images"] == 2 * 8 * 3 * 3
    attr = (home / "raw" / "demo-celeba" / "list_attr_celeba.txt").read_text().splitlines()
    assert attr[0].strip() == "40" and len(attr) == 42
    again = runner.invoke(app, ["fetch", "demo-celeba", "--count", "40", "--json"])
    assert json.loads(again.stdout)["skipped"] is True

"""`starcli fetch` end to end over a loopback HTTP server (no network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile

import filelock
import pytest
from typer.testing import CliRunner

from starcli.cli import app
from starcli.data import download as dl
from starcli.data import fetch as fetch_mod
from starcli.data.fetch import FetchConfig, fetch
from starcli.errors import StarcliError

runner = CliRunner()

ATTR = "3\nBlack_Hair Male\n000001.jpg  1 -1\n000002.jpg -1  1\n000003.jpg  1  1\n"


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Back-off sleeps are recorded, not slept, and gdown cannot run: a test that would
    fall back to Google Drive fails at once instead of reaching the network."""
    sleeps = []
    monkeypatch.setattr(dl, "_sleep", sleeps.append)
    monkeypatch.setitem(sys.modules, "gdown", None)
    return sleeps


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


def test_404_everywhere_is_exit_1_with_next_step(home, server, offline):
    files = {"list_attr_celeba.txt": ATTR.encode()}  # registered but not served
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output
    assert "HTTP 404" in error[0] and "--mirror" in error[0], result.output
    assert "Traceback" not in result.output
    # One request, no retry, no back-off and no other source: a 404 is final.
    assert server.seen == ["/data/list_attr_celeba.txt"] and offline == []


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


# --------------------------------------------------------------------------- --from overlaps


def _tree(root):
    """Every entry below root: relative path -> sha256 of a file, 'dir', or the link target."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                with open(path, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _user_rafd_folder(home):
    """The user unpacked RaFD (and more) straight into starcli's own raw/rafd/."""
    own = home / "raw" / "rafd"
    (own / "extra").mkdir(parents=True)
    (own / "Rafd090_07_Caucasian_female_happy_frontal.jpg").write_bytes(b"face-1")
    (own / "notes.txt").write_text("my notes")
    (own / "extra" / "Rafd045_12_Moroccan_male_angry_left.jpg").write_bytes(b"face-2")
    (own / "extra" / "consent.pdf").write_bytes(b"%PDF")
    (own / "RaFD.zip").write_bytes(_zip_bytes({"Rafd090_01_Kid_male_sad_left.jpg": b"k"}))
    return own


@pytest.mark.parametrize("source", ["raw/rafd", "raw", ".", "raw/rafd/extra",
                                    "raw/rafd/RaFD.zip", "link"])
def test_rafd_from_a_source_overlapping_the_target_is_refused_untouched(home, tmp_path,
                                                                        source):
    own = _user_rafd_folder(home)
    (tmp_path / "link").symlink_to(own, target_is_directory=True)
    path = tmp_path / "link" if source == "link" else home / source
    before = _tree(tmp_path)
    result = runner.invoke(app, ["fetch", "rafd", "--from", str(path)])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "--from" in error[0] and str(own) in error[0], result.output
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == before  # not one byte moved, renamed or deleted


def test_celeba_from_its_own_raw_folder_is_refused_untouched(home, tmp_path, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    own = home / "raw" / "celeba"
    own.mkdir(parents=True)
    for name, data in files.items():
        (own / name).write_bytes(data)
    (own / "mine.txt").write_text("keep")
    before = _tree(tmp_path)
    result = runner.invoke(app, ["fetch", "celeba", "--from", str(home)])
    assert result.exit_code == 2, result.output
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- extraction stamp


def test_deleted_or_partial_image_folder_is_extracted_again(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    assert runner.invoke(app, ["fetch", "celeba", "--mirror", server.url]).exit_code == 0
    images = home / "raw" / "celeba" / "img_align_celeba"
    (images / "000002.jpg").unlink()  # partial
    requests = len(server.seen)
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    assert result.exit_code == 0, result.output
    assert (images / "000002.jpg").read_bytes() == b"\xff\xd8fake-jpeg-2"
    assert len(server.seen) == requests  # the verified zip was reused, not downloaded again
    shutil.rmtree(images)  # gone
    assert runner.invoke(app, ["fetch", "celeba", "--mirror", server.url]).exit_code == 0
    assert sorted(p.name for p in images.iterdir()) == ["000001.jpg", "000002.jpg",
                                                         "000003.jpg"]


def test_force_extracts_again(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    assert runner.invoke(app, ["fetch", "celeba", "--mirror", server.url]).exit_code == 0
    image = home / "raw" / "celeba" / "img_align_celeba" / "000001.jpg"
    image.write_bytes(b"damaged")  # same count, wrong bytes: only --force can tell
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url, "--force"])
    assert result.exit_code == 0, result.output
    assert image.read_bytes() == b"\xff\xd8fake-jpeg-1"


# --------------------------------------------------------------------------- verification stamp


def test_changed_registry_digest_forces_verification_again(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    assert runner.invoke(app, ["fetch", "celeba", "--mirror", server.url]).exit_code == 0
    good_sha = hashlib.sha256(files["list_attr_celeba.txt"]).hexdigest()
    text = (home / "datasets.toml").read_text().replace(good_sha, "0" * 64)
    (home / "datasets.toml").write_text(text)
    result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    assert result.exit_code == 1, result.output  # the old stamp no longer vouches for it
    assert "list_attr_celeba.txt" in result.output and "sha256" in result.output


# --------------------------------------------------------------------------- one fetch at a time


def _held_lock(home, name):
    path = fetch_mod.lock_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), thread_local=False)
    lock.acquire()
    return lock, path


def test_second_fetch_of_a_dataset_fails_clearly_while_one_runs(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    lock, path = _held_lock(home, "celeba")
    try:
        with pytest.raises(StarcliError) as info:
            fetch(FetchConfig(home=home, dataset="celeba", mirrors=(server.url,),
                              lock_timeout=0.2))
    finally:
        lock.release()
    msg = str(info.value)
    assert "another `starcli fetch celeba`" in msg and str(path) in msg and "\n" not in msg
    assert server.seen == [] and not list(home.rglob("*.part"))
    summary = fetch(FetchConfig(home=home, dataset="celeba", mirrors=(server.url,),
                                lock_timeout=0.2))
    assert {f["status"] for f in summary["files"]} == {"downloaded"}


def test_fetch_waits_for_a_running_fetch_then_goes_on(home, server):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    lock, _ = _held_lock(home, "celeba")
    timer = threading.Timer(0.3, lock.release)
    timer.start()
    try:
        summary = fetch(FetchConfig(home=home, dataset="celeba", mirrors=(server.url,),
                                    lock_timeout=60))
    finally:
        timer.join()
    assert {f["status"] for f in summary["files"]} == {"downloaded"}


def test_locked_fetch_from_the_cli_is_one_line_exit_1(home, server, monkeypatch):
    files = _tiny_celeba(server)
    (home / "datasets.toml").write_text(_entry("celeba", files, 3))
    monkeypatch.setattr(fetch_mod, "LOCK_TIMEOUT", 0.1)
    lock, _ = _held_lock(home, "celeba")
    try:
        result = runner.invoke(app, ["fetch", "celeba", "--mirror", server.url])
    finally:
        lock.release()
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "another `starcli fetch celeba`" in error[0], result.output


# --------------------------------------------------------------------------- format handlers

_CKPT = ('[mine-ckpt]\ntitle = "weights"\naccess = "download"\n'
         'format = "stargan-v1-checkpoint"\n')


def test_checkpoint_formats_go_to_the_handler_the_caller_gives(home):
    (home / "datasets.toml").write_text(_CKPT)
    calls = []

    def handler(spec, cfg, progress):
        calls.append((spec.name, cfg.dataset, progress))
        return {"dataset": spec.name, "path": "somewhere"}

    out = fetch(FetchConfig(home=home, dataset="mine-ckpt"),
                handlers={"stargan-v1-checkpoint": handler})
    assert out == {"dataset": "mine-ckpt", "path": "somewhere"}
    assert calls == [("mine-ckpt", "mine-ckpt", None)]


def test_checkpoint_format_without_a_handler_is_a_clear_error(home):
    (home / "datasets.toml").write_text(_CKPT)
    with pytest.raises(StarcliError) as info:
        fetch(FetchConfig(home=home, dataset="mine-ckpt"), handlers={})
    msg = str(info.value)
    assert "mine-ckpt" in msg and "stargan-v1-checkpoint" in msg and "\n" not in msg
    assert "starcli fetch mine-ckpt" in msg


def test_data_layer_dispatches_without_importing_model_code(home):
    (home / "datasets.toml").write_text(_CKPT)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from starcli.data.fetch import FetchConfig, fetch\n"
        f"out = fetch(FetchConfig(home=Path({str(home)!r}), dataset='mine-ckpt'),\n"
        "            handlers={'stargan-v1-checkpoint': lambda s, c, p: {'dataset': s.name}})\n"
        "allowed = ('starcli.data', 'starcli.errors', 'starcli.paths', 'starcli.progress',\n"
        "           'starcli.utils')\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('starcli.')\n"
        "             and not m.startswith(allowed)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout.strip().replace("'", '"')) == []


def _afhq_zip(counts: dict[str, dict[str, int]]) -> tuple[bytes, int]:
    from PIL import Image

    files, n = {}, 0
    for split, per in counts.items():
        for domain, k in per.items():
            for i in range(k):
                buf = io.BytesIO()
                Image.new("RGB", (64, 64), (40 * i, 90, 30)).save(buf, format="JPEG")
                files[f"afhq/{split}/{domain}/{domain}_{i}.jpg"] = buf.getvalue()
                n += 1
    return _zip_bytes(files), n


def test_afhq_downloads_over_loopback_and_prepares_with_its_split_and_domain_order(
        home, server, offline):
    """A StarGAN v2 dataset (train|val/<domain>/ in one archive): fetched from a mirror,
    extracted, counted, then prepared with the archive's own split and sorted domains."""
    from starcli.data.dataset import open_prepared
    from starcli.data.prepare import PrepareConfig, prepare

    data, n = _afhq_zip({"train": {"wild": 3, "cat": 2, "dog": 2},
                         "val": {"cat": 1, "dog": 1, "wild": 1}})
    server.files["afhq.zip"] = data
    # The shipped entry publishes no checksum; this copy has its own image count.
    (home / "datasets.toml").write_text(f"[afhq]\nimage_count = {n}\n")
    summary = fetch(FetchConfig(home=home, dataset="afhq", mirrors=(server.url,)))
    assert summary["files"][0]["status"] == "downloaded"
    assert server.seen == ["/data/afhq.zip"] and offline == []
    assert (home / "raw" / "afhq" / "afhq" / "val" / "wild" / "wild_0.jpg").is_file()

    done = prepare(PrepareConfig(home=home, dataset="afhq", size=16))
    assert done["splits"] == {"train": 7, "test": 3}
    ds = open_prepared(home, "afhq", 16)
    assert ds.space.names == ("cat", "dog", "wild")
    assert ds.manifest["framing"]["source"] == [512, 512]
    assert sorted(ds.source_names("test")) == ["val/cat/cat_0.jpg", "val/dog/dog_0.jpg",
                                               "val/wild/wild_0.jpg"]
    assert ds.labels("test")[:, 2].sum() == 1  # one wild face held out

    (home / "raw" / "afhq" / "afhq" / "train" / "fox").mkdir()
    (home / "raw" / "afhq" / "afhq" / "train" / "fox" / "x.jpg").write_bytes(
        (home / "raw" / "afhq" / "afhq" / "val" / "cat" / "cat_0.jpg").read_bytes())
    from starcli.errors import UsageError

    with pytest.raises(UsageError, match="afhq has cat, dog, wild"):
        prepare(PrepareConfig(home=home, dataset="afhq", size=16, force=True))

"""`vipamin data get`: tiny archives in V-PETL Bench's layout, served the way the Hugging Face hub serves them.

A local HTTP server on 127.0.0.1 answers the two hub calls huggingface_hub makes (HEAD/GET
``/datasets/<repo>/resolve/<rev>/<file>`` and GET ``/api/datasets/<repo>/tree/<rev>``), so the real
download code runs, through the real huggingface_hub cache. The VTAB tasks have the real list-file
counts (800 / 200 / 1000 lines, the real class counts) over a few PNGs, so `data check` accepts them.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vipamin_cli.data import staging
from vipamin_cli.data.get import get_data
from vipamin_cli.errors import InputError, RuntimeFailure

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TASKS = {"patch_camelyon": 2, "kitti": 4}


# ----------------------------------------------------------------------------------------------------------
# Tiny archives in the published layouts


def _png(seed: int) -> bytes:
    img = Image.new("RGB", (16, 16), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def vtab_entries(task: str, classes: int, test: int = 12) -> dict[str, bytes]:
    """NOAH's layout: images/<split>/NNNNNN.png and '<relative path> <label>' lines, real counts."""
    files: dict[str, bytes] = {}
    lines: dict[str, list[str]] = {}
    for split, n, pool in (("train800", 800, 6), ("val200", 200, 4), ("test", test, test)):
        for i in range(pool):
            files[f"images/{split}/{i:06d}.png"] = _png(i + len(split))
        lines[split] = [f"images/{split}/{i % pool:06d}.png {i % classes}" for i in range(n)]
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        files[f"{split}.txt"] = ("\n".join(rows) + "\n").encode()
    return {f"{task}/{k}": v for k, v in files.items()}


def write_zip(path: Path, entries: dict[str, bytes], top: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(top + name, data)
    return path


def vtab_zip(path: Path, top: str = "vtab-1k/", tasks: dict[str, int] = TASKS) -> Path:
    entries: dict[str, bytes] = {}
    for task, classes in tasks.items():
        entries.update(vtab_entries(task, classes))
    return write_zip(path, entries, top)


def write_tar(path: Path, entries: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# ----------------------------------------------------------------------------------------------------------
# A local stand-in for the hub


class Hub:
    """Files per repository, served like huggingface.co; ``requests`` records every (method, path)."""

    def __init__(self, repos: dict[str, dict[str, Path]]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def _answer(self, h: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?")[0]
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "datasets"] and parts[4:5] == ["tree"]:
            files = self.repos.get(f"{parts[2]}/{parts[3]}", {})
            listing = [{"type": "file", "oid": "0" * 40, "size": p.stat().st_size, "path": name}
                       for name, p in files.items()]
            return self._send(h, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
        if parts[:1] == ["datasets"] and parts[3:4] == ["resolve"]:
            file = self.repos.get(f"{parts[1]}/{parts[2]}", {}).get("/".join(parts[5:]))
            if file is None:
                return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, body)
            data = file.read_bytes()
            start = int(h.headers["Range"].split("=")[1].split("-")[0]) if h.headers.get("Range") else 0
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(h, 206 if start else 200, data[start:], headers, body)
        self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)

    @staticmethod
    def _send(h, code: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        h.send_response(code)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            h.send_header(key, value)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def downloads(self) -> list[str]:
        return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]


@pytest.fixture()
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point huggingface_hub at a local hub (HF_ENDPOINT) with a private cache; returns a function to start it."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    servers = []

    def start(repos: dict[str, dict[str, Path]]) -> Hub:
        hub = Hub(repos)
        servers.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        return hub

    yield start
    for hub in servers:
        hub.server.shutdown()
        hub.server.server_close()


def _leftovers(root: Path) -> list[str]:
    """Temporary folders of ours still in root (none after any finished or failed run)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(staging.PREFIX) and p.is_dir())


# ----------------------------------------------------------------------------------------------------------
# VTAB-1k from the (local) hub: accepted by `data check` and `benchmark --suite vtab-1k`; a rerun downloads nothing


def test_vtab_from_the_hub_is_accepted_by_check_and_benchmark(online, tmp_path, cli) -> None:
    hub = online({"XiN0919/VTAB-1k": {"vtab-1k.zip": vtab_zip(tmp_path / "vtab-1k.zip")}})
    root = tmp_path / "data" / "vtab-1k"
    code, out, err = cli("data", "get", "vtab-1k", "--root", root, "--tasks", "kitti,patch_camelyon")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "kitti: unpacked; 22 images; train800 800, val200 200, train800val200 1000, test 12; 4/4 " \
                       "classes; ok"
    assert lines[1].startswith("patch_camelyon: unpacked; 22 images;") and lines[1].endswith("2/2 classes; ok")
    assert lines[-1] == f"vtab-1k under {root}: 2 of 2 task(s) ready"
    assert hub.downloads() == ["/datasets/XiN0919/VTAB-1k/resolve/main/vtab-1k.zip"]
    # the top vtab-1k/ folder is gone: NOAH's task folders sit directly under --root, with our record
    assert sorted(p.name for p in root.iterdir()) == [".vipamin-get.lock", "kitti", "patch_camelyon"]
    record = json.loads((root / "kitti" / staging.RECORD).read_text())
    assert (record["files"], record["sources"][0]["repo"], record["sources"][0]["revision"]) == \
           (26, "XiN0919/VTAB-1k", COMMIT)
    assert (root / "kitti" / "images" / "test" / "000011.png").read_bytes() == _png(11 + len("test"))

    code, out, err = cli("data", "check", root, "--suite", "vtab-1k", "--tasks", "kitti,patch_camelyon")
    assert code == 0, out + err
    code, out, err = cli("benchmark", "--suite", "vtab-1k", "--root", root, "--tasks", "kitti", "--backbone",
                         "vit-tiny-test", "--methods", "linear", "--preset", "quick", "--epochs", "1",
                         "--warmup-epochs", "0", "--lr", "0.5", "--seeds", "1", "--calib-size", "4", "--no-plot",
                         "--device", "cpu", "--out", tmp_path / "bench")
    assert code == 0, err
    assert "| method | kitti | Structured | mean |" in out and "| linear |" in out

    before = len(hub.requests)
    code, out, _ = cli("data", "get", "vtab-1k", "--root", root, "--tasks", "kitti,patch_camelyon")
    assert code == 0 and out.startswith("kitti: kept (unpacked before; --overwrite unpacks it again); 22 images")
    assert len(hub.requests) == before  # nothing to unpack: the hub is not even asked


def test_dry_run_names_repository_file_and_size_and_writes_nothing(online, tmp_path) -> None:
    archive = vtab_zip(tmp_path / "vtab-1k.zip")
    hub = online({"XiN0919/VTAB-1k": {"vtab-1k.zip": archive}})
    root = tmp_path / "absent-root"
    report = get_data("vtab-1k", root, tasks=["kitti"], dry_run=True)
    size = archive.stat().st_size
    assert report.lines == [f"XiN0919/VTAB-1k/vtab-1k.zip: {size / 1e3:.2f} kB, to download from {hub.url}",
                            f"kitti -> {root / 'kitti'}: would unpack", "dry run: nothing was downloaded or written"]
    assert not root.exists() and hub.downloads() == []


def test_archive_without_top_folder_and_v_petl_task_alias(tmp_path) -> None:
    """Per-task zips (no vtab-1k/ folder), V-PETL's `cifar100` name mapped to NOAH's `cifar`, from --from."""
    first = write_zip(tmp_path / "cifar.zip", vtab_entries("cifar100", 100))
    second = write_zip(tmp_path / "kitti.zip", {**vtab_entries("kitti", 4), "README.txt": b"readme",
                                                "__MACOSX/kitti/._train800.txt": b"\x00\x05"})
    root = tmp_path / "root"
    report = get_data("vtab-1k", root, tasks=["cifar", "kitti"], from_files=[first, second])
    assert report.ok, report.lines
    assert report.lines[0].startswith("cifar: unpacked; 22 images;") and "100/100 classes" in report.lines[0]
    assert (root / "cifar" / "train800.txt").read_text().splitlines()[1] == "images/train800/000001.png 1"
    assert not (root / "cifar100").exists() and not (root / "kitti" / "._train800.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == [".vipamin-get.lock", "cifar", "kitti"]  # README skipped
    record = json.loads((root / "cifar" / staging.RECORD).read_text())
    assert record["sources"] == [{"archive": "cifar.zip", "path": str(first.resolve()),
                                  "size": first.stat().st_size}]


# ----------------------------------------------------------------------------------------------------------
# Hostile archives: refused as a whole, naming the entry, before anything is written


def _zip_with(entry: zipfile.ZipInfo | str, data: bytes = b"x") -> dict:
    return {"entry": entry, "data": data}


def _symlink_zip_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("vtab-1k/kitti/images/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _tar_entry(kind: bytes, name: str = "vtab-1k/kitti/images/x", link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(("entry", "needle"), [
    ("vtab-1k/kitti/../../evil.txt", "'vtab-1k/kitti/../../evil.txt'"),
    ("/tmp/evil.txt", "'/tmp/evil.txt' in"),
    ("vtab-1k\\kitti\\..\\..\\evil.txt", "backslash"),
    (_symlink_zip_entry(), "'vtab-1k/kitti/images/link' in"),
    (_tar_entry(tarfile.SYMTYPE, link="/etc"), "symbolic link to '/etc'"),
    (_tar_entry(tarfile.LNKTYPE, link="/etc/passwd"), "hard link to '/etc/passwd'"),
    (_tar_entry(tarfile.CHRTYPE), "device or FIFO entry"),
    (_tar_entry(tarfile.FIFOTYPE), "device or FIFO entry"),
])
def test_unsafe_entries_refuse_the_whole_archive(tmp_path, entry, needle) -> None:
    good = vtab_entries("kitti", 4)
    if isinstance(entry, tarfile.TarInfo):
        archive = write_tar(tmp_path / "bad.tar.gz", {f"vtab-1k/{k}": v for k, v in good.items()})
        with tarfile.open(archive, "r:gz") as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
        with tarfile.open(archive, "w:gz") as tf:
            for m, data in members:
                tf.addfile(m, io.BytesIO(data))
            tf.addfile(entry)
    else:
        archive = write_zip(tmp_path / "bad.zip", good, "vtab-1k/")
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr(entry, b"/etc/passwd")
    root = tmp_path / "root"
    with pytest.raises(InputError) as caught:
        get_data("vtab-1k", root, tasks=["kitti"], from_files=[archive])
    assert needle in str(caught.value) and str(archive) in str(caught.value)
    assert "refuses archives with absolute paths, '..', links or device entries" in str(caught.value)
    assert not root.exists() and not (tmp_path / "evil.txt").exists()  # refused before anything was written


def test_unsafe_archive_is_one_line_exit_2_on_the_command_line(tmp_path, cli) -> None:
    archive = write_zip(tmp_path / "slip.zip", {"kitti/../../../evil.txt": b"x"})
    code, out, err = cli("data", "get", "vtab-1k", "--root", tmp_path / "root", "--from", archive)
    assert code == 2 and out == ""
    assert err.startswith("error: unsafe entry 'kitti/../../../evil.txt' in ") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------
# Damaged archives and bad --from files


def test_truncated_and_corrupt_archives_name_the_file_and_the_fix(tmp_path, cli) -> None:
    whole = vtab_zip(tmp_path / "vtab-1k.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code, _, err = cli("data", "get", "vtab-1k", "--root", tmp_path / "r1", "--from", cut)
    assert code == 2 and err.count("\n") == 1
    assert err == f"error: archive {cut} is truncated or corrupt (neither a zip nor a tar archive); download " \
                  "cut.zip again and pass the new copy with --from\n"
    # a member whose bytes were damaged: its CRC fails while unpacking; the half task is removed
    bad = write_zip(tmp_path / "crc.zip", vtab_entries("kitti", 4))
    data = bytearray(bad.read_bytes())
    spot = data.index(b"IDAT")  # inside a PNG (zipfile's writestr stores without compression)
    data[spot + 8] ^= 0xFF
    bad.write_bytes(bytes(data))
    root = tmp_path / "r2"
    code, _, err = cli("data", "get", "vtab-1k", "--root", root, "--from", bad, "--tasks", "kitti")
    assert code == 2 and err.startswith(f"error: archive {bad} is truncated or corrupt (Bad CRC-32")
    assert not (root / "kitti").exists() and _leftovers(root) == []


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p / "missing.zip", "--from file not found: "),
    (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "(neither a zip nor a tar archive)"),
    (lambda p: p, "is a directory, not a file"),
])
def test_from_a_missing_or_non_archive_file(tmp_path, cli, make, needle) -> None:
    code, out, err = cli("data", "get", "vtab-1k", "--root", tmp_path / "root", "--from", make(tmp_path))
    assert code == 2 and out == "" and needle in err and err.count("\n") == 1, err


def test_damaged_cached_download_says_delete_it_or_force_download(online, tmp_path, cli) -> None:
    hub = online({"XiN0919/VTAB-1k": {"vtab-1k.zip": vtab_zip(tmp_path / "vtab-1k.zip")}})
    root = tmp_path / "root"
    assert cli("data", "get", "vtab-1k", "--root", root, "--tasks", "kitti")[0] == 0
    blob = next((tmp_path / "hf-cache").glob("datasets--XiN0919--VTAB-1k/blobs/*"))
    blob.write_bytes(blob.read_bytes()[:1000])  # as if the disk had lost its end
    code, _, err = cli("data", "get", "vtab-1k", "--root", root, "--tasks", "kitti", "--overwrite")
    assert code == 1 and err.count("\n") == 1
    assert err.endswith(f"; delete {blob} from the Hugging Face cache, or run the same command with "
                        "--force-download\n")
    assert (root / "kitti" / staging.RECORD).is_file()  # the finished task was not touched
    code, out, err = cli("data", "get", "vtab-1k", "--root", root, "--tasks", "kitti", "--overwrite",
                         "--force-download")
    assert code == 0, err
    assert out.startswith("kitti: unpacked; 22 images") and len(hub.downloads()) == 2


# ----------------------------------------------------------------------------------------------------------
# Offline


def test_offline_without_the_file_in_the_cache(tmp_path, cli, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, out, err = cli("data", "get", "vtab-1k", "--root", tmp_path / "root")
    assert code == 2 and out == "" and err.count("\n") == 1
    cache = tmp_path / "empty-cache"
    assert err == (f"error: vtab-1k.zip of XiN0919/VTAB-1k is not in the Hugging Face cache ({cache})"
                   " and HF_HUB_OFFLINE=1 forbids downloading it; go online (unset HF_HUB_OFFLINE), or download "
                   "https://huggingface.co/datasets/XiN0919/VTAB-1k/resolve/main/vtab-1k.zip on another machine and "
                   "pass it with --from FILE\n")
    report = get_data("vtab-1k", tmp_path / "root", tasks=["kitti"], dry_run=True)
    assert report.lines[0] == "XiN0919/VTAB-1k/vtab-1k.zip: not in the Hugging Face cache (HF_HUB_OFFLINE=1: size " \
                              "unknown, cannot download)"


# ----------------------------------------------------------------------------------------------------------
# Existing roots: our finished tasks kept, folders not ours never deleted


def test_existing_root_keeps_what_is_there_and_never_deletes_a_foreign_folder(tmp_path, cli) -> None:
    archive = vtab_zip(tmp_path / "vtab-1k.zip")
    root = tmp_path / "root"
    (root / "kitti").mkdir(parents=True)
    (root / "kitti" / "mine.txt").write_text("the user's own")
    (root / "notes.md").write_text("keep me")
    report = get_data("vtab-1k", root, tasks=["kitti", "patch_camelyon"], from_files=[archive])
    assert report.lines[0].startswith("kitti: kept (not made by `vipamin data get`); 0 images; no list files")
    assert report.lines[1] == f"  kitti: missing list file: train800.txt not found in {root / 'kitti'}"
    assert [line for line in report.lines if line.startswith("patch_camelyon")][0].startswith(
        "patch_camelyon: unpacked; 22 images") and report.not_ready == ["kitti"]
    assert str(report.failure()).startswith(f"1 vtab-1k task(s) not ready under {root}: kitti; see the lines above")
    code, out, err = cli("data", "get", "vtab-1k", "--root", root, "--tasks", "kitti", "--from", archive,
                         "--overwrite")
    assert code == 2 and err == f"error: {root / 'kitti'} exists and was not made by `vipamin data get`; " \
                                "--overwrite only replaces folders it made; move that folder away, or pick another " \
                                "--root\n"
    assert (root / "kitti" / "mine.txt").read_text() == "the user's own" and (root / "notes.md").is_file()
    (root / "file").write_text("x")
    with pytest.raises(InputError, match="--root .*/file is a file, not a folder; pass a folder"):
        get_data("vtab-1k", root / "file", from_files=[archive])


def test_overwrite_replaces_our_task_and_a_second_run_waits_for_none(tmp_path) -> None:
    archive = vtab_zip(tmp_path / "vtab-1k.zip")
    root = tmp_path / "root"
    get_data("vtab-1k", root, tasks=["kitti"], from_files=[archive])
    record = json.loads((root / "kitti" / staging.RECORD).read_text())
    assert record["listing"] == sorted(k.removeprefix("kitti/") for k in vtab_entries("kitti", 4))  # every file
    (root / "kitti" / "train800.txt").write_text("edited\n")
    assert get_data("vtab-1k", root, tasks=["kitti"], from_files=[archive]).not_ready == ["kitti"]  # kept: edited
    # a file the user put into our folder is not provably ours: --overwrite refuses before anything, naming it
    (root / "kitti" / "images" / "mine.txt").write_text("the user's")
    with pytest.raises(InputError) as caught:
        get_data("vtab-1k", root, tasks=["kitti"], from_files=[archive], overwrite=True)
    assert str(caught.value) == (f"{root / 'kitti' / 'images' / 'mine.txt'} is not one of the files `vipamin data "
                                 f"get` unpacked into {root / 'kitti'}; --overwrite would delete it; move that file "
                                 "out of the folder, or pick another --root")
    assert (root / "kitti" / "images" / "mine.txt").read_text() == "the user's"
    (root / "kitti" / "images" / "mine.txt").unlink()
    report = get_data("vtab-1k", root, tasks=["kitti"], from_files=[archive], overwrite=True)
    assert report.ok and (root / "kitti" / "train800.txt").read_text().count("\n") == 800
    assert _leftovers(root) == []
    with staging.root_lock(root), pytest.raises(InputError, match="another `vipamin data get` is writing into"):
        get_data("vtab-1k", root, tasks=["kitti"], from_files=[archive], overwrite=True)


# ----------------------------------------------------------------------------------------------------------
# Interruptions: a full disk, Ctrl-C and kill -9 leave no task that looks complete; the next run continues


def test_not_enough_space_is_refused_before_unpacking(tmp_path, monkeypatch) -> None:
    import shutil as real

    from vipamin_cli.data import get as getmod

    archive = vtab_zip(tmp_path / "vtab-1k.zip")
    # whole 4 KiB blocks per file, plus 16 blocks of slack
    need = sum(-(-len(v) // 4096) * 4096 for v in vtab_entries("kitti", 4).values()) + 16 * 4096
    usage = real.disk_usage(tmp_path)
    monkeypatch.setattr(getmod.shutil, "disk_usage", lambda _p: usage._replace(free=need - 1))
    with pytest.raises(RuntimeFailure) as caught:
        get_data("vtab-1k", tmp_path / "root", tasks=["kitti"], from_files=[archive])
    assert f"to unpack kitti: it needs {need / 1e3:.2f} kB, {(need - 1) / 1e3:.2f} kB are free" in str(caught.value)
    assert _leftovers(tmp_path / "root") == [] and not (tmp_path / "root" / "kitti").exists()
    monkeypatch.setattr(getmod.shutil, "disk_usage", lambda _p: usage._replace(free=need))
    assert get_data("vtab-1k", tmp_path / "root", tasks=["kitti"], from_files=[archive]).ok


def test_disk_full_while_unpacking_removes_the_half_task(tmp_path, monkeypatch) -> None:
    import errno
    import shutil as real

    from vipamin_cli.data import unpack

    calls = []

    def copy(src, dst, length=0):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real.copyfileobj(src, dst, length)

    monkeypatch.setattr(unpack.shutil, "copyfileobj", copy)
    root = tmp_path / "root"
    with pytest.raises(RuntimeFailure, match="no space left on .* while unpacking vtab-1k.zip"):
        get_data("vtab-1k", root, tasks=["kitti"], from_files=[vtab_zip(tmp_path / "vtab-1k.zip")])
    assert sorted(p.name for p in root.iterdir()) == [".vipamin-get.lock"]


def _start_get(root: Path, archive: Path) -> subprocess.Popen:
    env = {**os.environ, "VIPAMIN_QUIET": "1"}
    return subprocess.Popen([sys.executable, "-m", "vipamin_cli", "data", "get", "vtab-1k", "--root", str(root),
                             "--tasks", "kitti", "--from", str(archive)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_unpacking(root: Path, proc: subprocess.Popen, stale: Path | None = None) -> Path:
    """The run's temporary folder, once the last (slow) member is being written into it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        found = [p for p in root.glob(".vipamin-get.kitti.*.tmp/images/zeros.bin") if p.parent.parent != stale]
        if found:
            return found[0].parent.parent
        time.sleep(0.002)
    raise AssertionError(f"the unpack never reached the last member: {proc.communicate()}")


def test_kill_9_or_ctrl_c_while_unpacking_then_the_next_run_continues(tmp_path) -> None:
    entries = vtab_entries("kitti", 4)
    entries["kitti/images/zeros.bin"] = bytes(256 << 20)  # 256 MB of zeros, 250 kB compressed: a slow member
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    root = tmp_path / "root"

    proc = _start_get(root, archive)
    tmp = _wait_for_unpacking(root, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "kitti").exists() and (tmp / staging.PARTIAL).is_file()
    assert (tmp / "train800.txt").is_file() and not (tmp / staging.RECORD).exists()  # half a task, not complete
    (root / ".vipamin-get.kitti.0.tmp").mkdir()  # killed before its tag went in: empty, removed with rmdir
    (root / ".vipamin-get.user.tmp").mkdir()
    (root / ".vipamin-get.user.tmp" / "theirs.txt").write_text("not ours: kept")

    proc = _start_get(root, archive)
    _wait_for_unpacking(root, proc, stale=tmp)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "error: interrupted while unpacking kitti; tasks finished before are kept; run the same command " \
                  "again to continue\n"
    # the stale folders of the kill -9 went too; the untagged, non-empty one is not provably ours: kept
    assert not (root / "kitti").exists() and _leftovers(root) == [".vipamin-get.user.tmp"]

    entries.pop("kitti/images/zeros.bin")
    report = get_data("vtab-1k", root, tasks=["kitti"], from_files=[write_zip(tmp_path / "small.zip", entries)])
    assert report.ok and _leftovers(root) == [".vipamin-get.user.tmp"]


# ----------------------------------------------------------------------------------------------------------
# FGVC: json.zip + the image archives the hub copy holds; one line for a dataset it lacks; --from for the rest


def _fgvc_images(keys: list[str], prefix: str) -> dict[str, bytes]:
    return {prefix + key: _png(i) for i, key in enumerate(keys)}


def _fgvc_splits(folder: str, keys: list[str]) -> dict[str, bytes]:
    """VPT's json splits: every class in train, a few images in val and test."""
    labels = {key: i for i, key in enumerate(keys)}
    val, test = dict(list(labels.items())[:3]), dict(list(labels.items())[3:6])
    return {f"json/{folder}/{split}.json": json.dumps(d).encode()
            for split, d in (("train", labels), ("val", val), ("test", test))}


def test_fgvc_installs_what_the_hub_holds_and_says_where_to_get_the_rest(online, tmp_path, cli, monkeypatch) -> None:
    from huggingface_hub import constants

    cub = [f"{c:03d}.class{c}/bird_{c}.png" for c in range(1, 201)]  # keys relative to images/, like VPT's
    cars = [f"car_ims/{i:06d}.png" for i in range(1, 197)]  # keys relative to the folder
    dogs = [f"n{c:08d}-breed/n{c:08d}_1.png" for c in range(120)]  # keys relative to Images/
    splits = {**_fgvc_splits("CUB_200_2011", cub), **_fgvc_splits("StanfordCars", cars),
              **_fgvc_splits("StanfordDogs", dogs), **_fgvc_splits("nabirds", ["0295/a.png"])}
    files = {"json.zip": write_zip(tmp_path / "json.zip", splits),
             "CUB_200_2011.tgz": write_tar(tmp_path / "CUB_200_2011.tgz",
                                           {"attributes.txt": b"1 x\n", **_fgvc_images(cub, "CUB_200_2011/images/")}),
             "car_ims.tgz": write_tar(tmp_path / "car_ims.tgz", _fgvc_images(cars, "")),
             "cars_annos.mat": tmp_path / "json.zip"}
    hub = online({"XiN0919/FGVC": files})
    root = tmp_path / "fgvc"
    code, out, err = cli("data", "get", "fgvc", "--root", root, "--tasks", "cub,cars,nabirds")
    lines = out.splitlines()
    assert lines[0] == "cub: unpacked; 200 images; train 200, val 3, test 3; 200/200 classes; ok"
    assert lines[1] == "cars: unpacked; 196 images; train 196, val 3, test 3; 196/196 classes; ok"
    assert lines[2] == ("nabirds: not installed: XiN0919/FGVC has no image archive for it; get "
                        "https://dl.allaboutbirds.org/nabirds (nabirds.tar.gz, after accepting the Cornell Lab's terms "
                        f"of use) and run `vipamin data get fgvc --root {root} --tasks nabirds --from nabirds.tar.gz` "
                        f"(its nabirds/images/ go to {root / 'nabirds' / 'images'})")
    assert code == 1 and err == f"error: 1 fgvc task(s) not ready under {root}: nabirds; see the lines above: get " \
                                "the archives they name, or unpack again with --overwrite\n"
    assert sorted(hub.downloads()) == [f"/datasets/XiN0919/FGVC/resolve/main/{n}"
                                       for n in ("CUB_200_2011.tgz", "car_ims.tgz", "json.zip")]
    assert sorted(p.name for p in (root / "CUB_200_2011").iterdir()) == [
        ".vipamin-get.json", "images", "test.json", "train.json", "val.json"]  # attributes.txt: outside the prefix
    assert (root / "Stanford-cars" / "car_ims" / "000196.png").read_bytes() == _png(195)
    assert not (root / "nabirds").exists()
    code, out, err = cli("data", "check", root, "--suite", "fgvc", "--tasks", "cub,cars")
    assert code == 0, out + err

    # offline, the cached json.zip and the user's own Stanford Dogs images.tar (Images/ becomes images/)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    images_tar = write_tar(tmp_path / "images.tar", _fgvc_images(dogs, "Images/"), mode="w")
    report = get_data("fgvc", root, tasks=["dogs", "flowers", "cub"], from_files=[images_tar])
    assert report.lines[0] == "dogs: unpacked; 120 images; train 120, val 3, test 3; 120/120 classes; ok"
    assert report.lines[1] == "flowers: not installed: json.zip has no json splits for it"
    assert report.lines[2].startswith("cub: kept (unpacked before; --overwrite unpacks it again); 200 images")
    assert (root / "Stanford-dogs" / "images" / dogs[7]).read_bytes() == _png(7)
    assert len(hub.requests) == before
    with pytest.raises(InputError, match="holds neither FGVC json splits nor a known image archive"):
        get_data("fgvc", root, tasks=["nabirds"], from_files=[tmp_path / "json.zip", tmp_path / "car_ims.tgz",
                                                               write_zip(tmp_path / "x.zip", {"a.txt": b"a"})])


@pytest.mark.parametrize(("args", "message"), [
    (["imagenet", "--root", "R"], "error: unknown suite 'imagenet' for `data get`; use vtab-1k or fgvc\n"),
    (["vtab-1k", "--root", "R", "--tasks", "dtd,cifar10"], "error: unknown vtab-1k task(s): cifar10; pick --tasks "
                                                           "from cifar, caltech101, dtd, "),
    (["fgvc", "--root", "R", "--tasks", ","], "error: --tasks is empty; pass at least one value"),
    (["fgvc", "--root", "R", "--tasks", "cub,cub"], "error: --tasks lists 'cub' twice"),
    (["vtab-1k", "--root", "R", "--force-download"], "error: --force-download needs the network, but HF_HUB_OFFLINE=1 "
                                                     "is set; unset HF_HUB_OFFLINE, or drop --force-download\n"),
])
def test_bad_command_lines_are_one_line_exit_2(tmp_path, cli, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("data", "get", *args)
    assert code == 2 and out == "" and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "R").exists()


def test_ctrl_c_during_the_download_writes_nothing(online, tmp_path, cli, monkeypatch) -> None:
    import huggingface_hub

    online({"XiN0919/VTAB-1k": {"vtab-1k.zip": vtab_zip(tmp_path / "vtab-1k.zip")}})

    def interrupted(**_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", interrupted)
    code, out, err = cli("data", "get", "vtab-1k", "--root", tmp_path / "root")
    assert code == 130 and out == "" and not (tmp_path / "root").exists()
    assert err == "error: download of vtab-1k.zip interrupted; nothing was unpacked; run the same command again " \
                  "(the download starts again)\n"

"""`vipamin data get vtab-1k|fgvc`: the benchmark data in the layout the suites read, in one command.

Sources are V-PETL Bench's copies on the Hugging Face hub (see docs/data.md for what was confirmed
about them): ``XiN0919/VTAB-1k`` holds ``vtab-1k.zip`` (NOAH's 19 task folders, list files and
images), ``XiN0919/FGVC`` holds ``json.zip`` (VPT's train/val/test json splits) and some of the
FGVC image archives. Archives are unpacked task by task (see :mod:`.staging` for the all-or-nothing
rename and :mod:`.unpack` for the entry checks), then checked like ``vipamin data check``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vipamin_cli import iosafety, validate
from vipamin_cli.errors import InputError, Interrupted, RuntimeFailure

from . import hub as hubmod
from . import staging
from .check import FGVC_TASKS, VTAB_TASKS, CheckReport, check_data
from .unpack import Archive, Member, extract, open_archive

VTAB_REPO, VTAB_FILE = "XiN0919/VTAB-1k", "vtab-1k.zip"
FGVC_REPO, FGVC_JSON = "XiN0919/FGVC", "json.zip"
VTAB_ALIASES = {"cifar100": "cifar"}  # V-PETL Bench's scripts call NOAH's `cifar` task `cifar100`
SUITE_NAMES = {"vtab-1k": "vtab-1k", "fgvc": "fgvc", "fgvc-fewshot": "fgvc"}
BLOCK = 4096


@dataclass(frozen=True)
class FgvcImages:
    """Where one FGVC dataset's images are: inside its official archive, and inside the task folder."""

    folder: str  # VPT's folder name (what --suite fgvc-fewshot reads)
    prefix: str  # the images' folder inside the archive
    dest: str  # where that folder goes inside the task folder (so VPT's json paths resolve)
    hub_names: tuple[str, ...]  # the archive's names looked for in XiN0919/FGVC
    obtain: str  # where to get the archive when the hub copy lacks it


FGVC_IMAGES: dict[str, FgvcImages] = {
    "cub": FgvcImages("CUB_200_2011", "CUB_200_2011/images/", "images/", ("CUB_200_2011.tgz", "CUB_200_2011.tar.gz"),
                      "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)"),
    "nabirds": FgvcImages("nabirds", "nabirds/images/", "images/", ("nabirds.tar.gz", "nabirds.tgz", "nabirds.tar"),
                          "https://dl.allaboutbirds.org/nabirds (nabirds.tar.gz, after accepting the Cornell Lab's "
                          "terms of use)"),
    "flowers": FgvcImages("OxfordFlower", "jpg/", "jpg/", ("102flowers.tgz", "102flowers.tar.gz"),
                          "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz)"),
    "dogs": FgvcImages("Stanford-dogs", "Images/", "images/",
                       ("images.tar", "Stanford-dogs.tar", "StanfordDogs.tar", "stanford_dogs.tar"),
                       "http://vision.stanford.edu/aditya86/ImageNetDogs/ (images.tar)"),
    "cars": FgvcImages("Stanford-cars", "car_ims/", "car_ims/", ("car_ims.tgz", "car_ims.tar.gz"),
                       f"car_ims.tgz of {FGVC_REPO} (Stanford's own download page is gone)"),
}


@dataclass
class Source:
    """An opened archive and how it is recorded in a task folder's record."""

    archive: Archive
    record: dict[str, Any]


@dataclass
class Part:
    """What one archive contributes to one task folder: (member, destination inside the folder) pairs."""

    source: Source
    plan: list[tuple[Member, str]]


@dataclass
class GetReport:
    suite: str
    root: Path
    lines: list[str] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    check: CheckReport | None = None

    @property
    def ok(self) -> bool:
        return not self.not_ready

    def failure(self) -> RuntimeFailure:
        """The one-line error for a run that left tasks not ready (the lines above say which and why)."""
        return RuntimeFailure(f"{len(self.not_ready)} {self.suite} task(s) not ready under {self.root}: "
                              f"{', '.join(self.not_ready)}",
                              "see the lines above: get the archives they name, or unpack again with --overwrite")


@iosafety.command_scope()
def get_data(suite: str, root: str | os.PathLike, tasks: Iterable[str] | None = None,
             from_files: Iterable[str | os.PathLike] = (), dry_run: bool = False, overwrite: bool = False,
             force_download: bool = False, note: Callable[[str], None] | None = None) -> GetReport:
    """Fetch (or take ``from_files``), unpack into ``root/<task>/`` and check each task of ``suite``.

    A finished task folder is kept unless ``overwrite``, and replaced then only when every file in it is
    one its record lists (vipamin deletes only what it can prove it made); a folder not made by this
    function is never deleted. ``dry_run`` only reports what would be downloaded and unpacked.
    """
    say = note or (lambda _m: None)
    suite = _suite(suite)
    wanted = _wanted(suite, tasks)
    root = _root(Path(root).expanduser(), create=False)
    froms = [_from_path(p) for p in from_files]
    states = {t: staging.state(root, folder_of(suite, t)) if root.is_dir() else "absent" for t in wanted}
    foreign = [t for t in wanted if states[t] == "foreign"]
    if overwrite and foreign:
        raise InputError(f"{root / folder_of(suite, foreign[0])} exists and was not made by `vipamin data get`; "
                         "--overwrite only replaces folders it made", "move that folder away, or pick another --root")
    todo = [t for t in wanted if states[t] == "absent" or (overwrite and states[t] == "ours")]
    for t in todo:
        if states[t] == "ours":  # refused before any download, naming the file that is not ours
            staging.check_replaceable(root / folder_of(suite, t))
    hub = hubmod.settings()
    if dry_run:
        return _dry_run(suite, root, wanted, states, todo, froms, hub)
    hubmod.check_force(hub, force_download)
    # Archives are fetched and every entry checked before anything is written under root.
    plan, status = (_plan_vtab if suite == "vtab-1k" else _plan_fgvc)(root, todo, froms, hub, force_download, say)
    if plan or root.is_dir():
        _root(root, create=True)
        with staging.root_lock(root):
            for name in staging.clean_stale(root):
                say(f"removed {name} (left by an interrupted run)")
            for task, parts in plan.items():
                _install(root, suite, task, folder_of(suite, task), parts)
                status[task] = "unpacked"
    for t in wanted:
        if t not in status:
            status[t] = ("kept (unpacked before; --overwrite unpacks it again)" if states[t] == "ours"
                         else "kept (not made by `vipamin data get`)")
    return _summarise(suite, root, wanted, status)


def folder_of(suite: str, task: str) -> str:
    return task if suite == "vtab-1k" else FGVC_IMAGES[task].folder


# ----------------------------------------------------------------------------------------------------------
# Inputs


def _suite(name: str) -> str:
    if name not in SUITE_NAMES:
        raise InputError(f"unknown suite '{name}' for `data get`", "use vtab-1k or fgvc")
    return SUITE_NAMES[name]


def _wanted(suite: str, tasks: Iterable[str] | None) -> list[str]:
    table = VTAB_TASKS if suite == "vtab-1k" else FGVC_TASKS
    if tasks is None:
        return list(table)
    from vipamin_cli.parsing import distinct

    names = [t.strip() for t in tasks if t.strip()]
    distinct(names, "--tasks")  # a repeated task is refused, as in every list option
    unknown = [t for t in names if t not in table]
    if unknown or not names:
        raise InputError(f"unknown {suite} task(s): {', '.join(unknown) or '(none given)'}",
                         f"pick --tasks from {', '.join(table)}")
    return names


def _root(root: Path, create: bool) -> Path:
    """``--root`` must be (or become, with ``create``) a writable folder; checked before any download.
    It is the command's declared output folder (iosafety): never a file, a FIFO or a broken link."""
    if not create:
        iosafety.declare_output_dir(root, "--root")
    else:
        validate.cache_dir(root, "--root")
        if not os.access(root, os.W_OK | os.X_OK):
            raise InputError(f"--root {root} is not writable", "point --root at a directory you can write to")
    return root


def _from_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    validate.regular_input(p, "--from file", "pass the archive you downloaded (a .zip, .tar, .tgz or .tar.gz file)")
    return p


def _open_from(path: Path) -> Source:
    archive = open_archive(path, f"download {path.name} again and pass the new copy with --from", user_file=True)
    return Source(archive, {"archive": path.name, "path": str(path.resolve()), "size": path.stat().st_size})


def _open_hub(repo: str, filename: str, hub: hubmod.HubSettings, force: bool, say: Callable[[str], None]) -> Source:
    say(f"{repo}: {filename} (from the Hugging Face cache, downloaded first if missing)")
    path = hubmod.download(repo, filename, hub, force=force)
    blob = path.resolve()
    fix = f"delete {blob} from the Hugging Face cache, or run the same command with --force-download"
    iosafety.check_input(blob, "downloaded archive", fix)  # a FIFO in the cache would block the reader
    archive = open_archive(path, fix)
    return Source(archive, {"archive": filename, "repo": repo, "revision": hubmod.revision_of(path),
                            "path": str(blob), "size": blob.stat().st_size})


# ----------------------------------------------------------------------------------------------------------
# VTAB-1k


def _vtab_task(name: str) -> tuple[str, str] | None:
    """(task, path inside the task folder) for an entry of a VTAB-1k archive, with or without a top folder."""
    parts = name.split("/")
    if parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        return None
    for depth in (0, 1):
        if len(parts) > depth:
            task = VTAB_ALIASES.get(parts[depth], parts[depth])
            if task in VTAB_TASKS:
                rel = "/".join(parts[depth + 1:])
                return (task, rel) if rel else None
    return None


def _vtab_parts(source: Source) -> dict[str, Part]:
    parts: dict[str, Part] = {}
    for member in source.archive.members:
        found = _vtab_task(member.name)
        if found is not None:
            parts.setdefault(found[0], Part(source, [])).plan.append((member, found[1]))
    return parts


Plan = tuple[dict[str, list[Part]], dict[str, str]]  # what to unpack per task; why the others cannot be


def _plan_vtab(root: Path, todo: list[str], froms: list[Path], hub: hubmod.HubSettings, force: bool,
               say: Callable[[str], None]) -> Plan:
    if not todo:
        return {}, {}
    sources = [_open_from(p) for p in froms] or [_open_hub(VTAB_REPO, VTAB_FILE, hub, force, say)]
    index: dict[str, list[Part]] = {}
    for source in sources:
        for task, part in _vtab_parts(source).items():
            index.setdefault(task, []).append(part)
    names = ", ".join(s.archive.path.name for s in sources)
    plan = {task: index[task] for task in todo if task in index}
    return plan, {task: f"not installed: {names} has no {task}/ folder" for task in todo if task not in index}


# ----------------------------------------------------------------------------------------------------------
# FGVC


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


_FGVC_ALIASES = {_norm(alias): task for task, (aliases, _) in FGVC_TASKS.items() for alias in aliases}


def _fgvc_json_dirs(archive: Archive) -> dict[str, str]:
    """Dataset -> the folder inside the archive that holds its ``train/val/test.json``."""
    found: dict[str, str] = {}
    for member in archive.files():
        folder, _, base = member.name.rpartition("/")
        if base in ("train.json", "val.json", "test.json") and folder:
            task = _FGVC_ALIASES.get(_norm(folder.rpartition("/")[2]))
            if task is not None:
                found.setdefault(task, folder)
    return found


def _fgvc_image_kinds(archive: Archive) -> set[str]:
    return {task for task, spec in FGVC_IMAGES.items() if any(m.name.startswith(spec.prefix) for m in archive.files())}


def _under(source: Source, prefix: str, dest: str) -> Part:
    plan = [(m, dest + m.name[len(prefix):]) for m in source.archive.members
            if m.name.startswith(prefix) and len(m.name) > len(prefix)]
    return Part(source, plan)


def _hub_images(tasks: list[str], hub: hubmod.HubSettings, force: bool, say: Callable[[str], None]
                ) -> tuple[dict[str, Source], dict[str, str]]:
    """The image archives the hub copy holds for ``tasks`` (cached ones when offline), and why others are missing."""
    sources: dict[str, Source] = {}
    why: dict[str, str] = {}
    listed = None if hub.offline else {name.lower(): name for name in hubmod.list_sizes(FGVC_REPO, hub)}
    for task in tasks:
        spec = FGVC_IMAGES[task]
        if listed is None:
            name = next((n for n in spec.hub_names if hubmod.cached(FGVC_REPO, n, hub)), None)
            reason = "not in the Hugging Face cache and HF_HUB_OFFLINE=1"
        else:
            name = next((listed[n.lower()] for n in spec.hub_names if n.lower() in listed), None)
            reason = f"{FGVC_REPO} has no image archive for it"
        if name is None:
            why[task] = reason
            continue
        source = _open_hub(FGVC_REPO, name, hub, force, say)
        if task not in _fgvc_image_kinds(source.archive):
            raise RuntimeFailure(f"{name} of {FGVC_REPO} has no {spec.prefix} folder, so it is not the expected "
                                 f"{task} archive", f"get {spec.obtain} and pass it with --from FILE")
        sources[task] = source
    return sources, why


def _fgvc_from(froms: list[Path]) -> tuple[list[Source], dict[str, Source]]:
    """The user's archives, sorted into json-split archives and image archives (by what they contain)."""
    jsons: list[Source] = []
    images: dict[str, Source] = {}
    for path in froms:
        source = _open_from(path)
        kinds = _fgvc_image_kinds(source.archive)
        if _fgvc_json_dirs(source.archive):
            jsons.append(source)
        elif not kinds:
            raise InputError(f"--from {path} holds neither FGVC json splits nor a known image archive",
                             "pass json.zip or an image archive: " + ", ".join(
                                 s.hub_names[0] for s in FGVC_IMAGES.values()))
        for kind in kinds:
            images.setdefault(kind, source)
    return jsons, images


def _plan_fgvc(root: Path, todo: list[str], froms: list[Path], hub: hubmod.HubSettings, force: bool,
               say: Callable[[str], None]) -> Plan:
    if not todo:
        return {}, {}
    jsons, images = _fgvc_from(froms)
    if not jsons:
        jsons = [_open_hub(FGVC_REPO, FGVC_JSON, hub, force, say)]
    splits = {task: (source, folder) for source in reversed(jsons)
              for task, folder in _fgvc_json_dirs(source.archive).items()}
    why: dict[str, str] = {}
    lacking = [t for t in todo if t not in images and t in splits]
    if lacking:
        found, why = _hub_images(lacking, hub, force, say)
        images.update(found)
    plan, status = {}, {}
    for task in todo:
        spec = FGVC_IMAGES[task]
        if task not in splits:
            status[task] = f"not installed: {', '.join(s.archive.path.name for s in jsons)} has no json splits for it"
        elif task not in images:
            status[task] = (f"not installed: {why.get(task, 'no image archive given')}; get {spec.obtain} and run "
                            f"`vipamin data get fgvc --root {root} --tasks {task} --from {spec.hub_names[0]}` "
                            f"(its {spec.prefix} go to {root / spec.folder / spec.dest})")
        else:
            source, folder = splits[task]
            plan[task] = [_under(source, folder + "/", ""), _under(images[task], spec.prefix, spec.dest)]
    return plan, status


# ----------------------------------------------------------------------------------------------------------
# Unpacking one task


def _gb(n: float) -> str:
    """A byte count the way the hub shows sizes (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} bytes"


def space_needed(parts: list[Part]) -> int:
    """Bytes the unpacked files take on disk: sizes rounded up to whole 4 KiB blocks, plus the folders."""
    need = 0
    for part in parts:
        for member, _ in part.plan:
            need += BLOCK if member.is_dir else -(-member.size // BLOCK) * BLOCK
    return need + 16 * BLOCK


def _install(root: Path, suite: str, task: str, folder: str, parts: list[Part]) -> None:
    """Unpack every part into a temporary folder of ours, then rename it to ``root/folder`` in one step."""
    from vipamin_cli.ui import progress_bar

    need, free = space_needed(parts), shutil.disk_usage(root).free
    if free < need:
        raise RuntimeFailure(f"no space left on {root} to unpack {task}: it needs {_gb(need)}, "
                             f"{_gb(free)} are free", "free disk space or choose another --root location (finished "
                             "tasks are kept; run the same command again)")
    total = sum(1 for part in parts for member, _ in part.plan if not member.is_dir)
    with staging.staging(root, folder) as tmp:
        files = size = 0
        try:
            with progress_bar(f"unpack {task}", total) as bar:
                for part in parts:
                    n, b = extract(part.source.archive, part.plan, tmp, bar.advance)
                    files, size = files + n, size + b
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted while unpacking {task}; tasks finished before are kept",
                              "run the same command again to continue") from None
        record = {"suite": suite, "task": task, "files": files, "bytes": size,
                  "sources": [part.source.record for part in parts],
                  "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        staging.commit(tmp, root, folder, record)


# ----------------------------------------------------------------------------------------------------------
# Reporting


def _check_line(task: str, status: str, summary: Any, problems: list[Any]) -> list[str]:
    lists = ", ".join(f"{k} {v}" for k, v in summary.counts.items()) or "no list files"
    verdict = "ok" if not problems else f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    lines = [f"{task}: {status}; {summary.images} images; {lists}; "
             f"{summary.classes_found}/{summary.classes_expected} classes; {verdict}"]
    return lines + [f"  {task}: {p.kind}: {p.detail}" for p in problems]


def _summarise(suite: str, root: Path, wanted: list[str], status: dict[str, str]) -> GetReport:
    report = GetReport(suite, root)
    present = [t for t in wanted if (root / folder_of(suite, t)).is_dir()]
    if present:
        report.check = check_data(root, suite, decode=False, tasks=present)
    summaries = {s.task: s for s in report.check.tasks} if report.check else {}
    for task in wanted:
        if task not in summaries:
            report.lines.append(f"{task}: {status[task]}")
            report.not_ready.append(task)
            continue
        problems = [p for p in report.check.errors if p.task == task] if report.check else []
        report.lines += _check_line(task, status[task], summaries[task], problems)
        if problems:
            report.not_ready.append(task)
    ready = len(wanted) - len(report.not_ready)
    report.lines.append(f"{suite} under {root}: {ready} of {len(wanted)} task(s) ready"
                        + ("" if report.ok else f"; not ready: {', '.join(report.not_ready)}"))
    return report


def _dry_run(suite: str, root: Path, wanted: list[str], states: dict[str, str], todo: list[str],
             froms: list[Path], hub: hubmod.HubSettings) -> GetReport:
    report = GetReport(suite, root)
    if froms:
        report.lines += [f"--from {p}: {_gb(p.stat().st_size)}" for p in froms]
    elif todo:
        repo = VTAB_REPO if suite == "vtab-1k" else FGVC_REPO
        listed = None if hub.offline else hubmod.list_sizes(repo, hub)
        report.lines.append(_dry_file_line(repo, VTAB_FILE if suite == "vtab-1k" else FGVC_JSON, listed, hub))
        for task in todo if suite == "fgvc" else []:
            report.lines.append(f"  {task}: " + _dry_images_line(task, listed, hub))
    else:
        report.lines.append("nothing to download: every requested task is unpacked already")
    for task in wanted:
        action = ("would unpack" if task in todo else
                  "kept (unpacked before)" if states[task] == "ours" else "kept (not made by `vipamin data get`)")
        report.lines.append(f"{task} -> {root / folder_of(suite, task)}: {action}")
    report.lines.append("dry run: nothing was downloaded or written")
    return report


def _dry_file_line(repo: str, name: str, listed: dict[str, int] | None, hub: hubmod.HubSettings) -> str:
    local = hubmod.cached(repo, name, hub)
    if local is not None:
        return f"{repo}/{name}: {_gb(local.stat().st_size)}, in the Hugging Face cache ({local})"
    if listed is None:
        return f"{repo}/{name}: not in the Hugging Face cache (HF_HUB_OFFLINE=1: size unknown, cannot download)"
    if name in listed:
        return f"{repo}/{name}: {_gb(listed[name])}, to download from {hub.endpoint}"
    return f"{repo}/{name}: not in the repository"


def _dry_images_line(task: str, listed: dict[str, int] | None, hub: hubmod.HubSettings) -> str:
    spec = FGVC_IMAGES[task]
    names = [n for n in spec.hub_names if hubmod.cached(FGVC_REPO, n, hub)]
    if not names and listed is not None:
        lower = {n.lower(): n for n in listed}
        names = [lower[n.lower()] for n in spec.hub_names if n.lower() in lower]
    if names:
        return _dry_file_line(FGVC_REPO, names[0], listed, hub)
    where = f"{FGVC_REPO} has no image archive for it" if listed is not None else \
        "no image archive in the Hugging Face cache (HF_HUB_OFFLINE=1)"
    return f"{where}; get {spec.obtain} and pass it with --from FILE"

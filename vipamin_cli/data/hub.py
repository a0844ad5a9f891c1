"""Files of Hugging Face dataset repositories, through huggingface_hub: its cache, token and endpoint.

``vipamin data get`` downloads a few large archives. huggingface_hub already does this well: it keeps
them in its cache (``HF_HUB_CACHE`` / ``HF_HOME``), reuses a cached copy, retries and resumes a
download cut by a network error, sends ``HF_TOKEN`` and talks to ``HF_ENDPOINT`` (a mirror). This
module only reads those settings when called (not when huggingface_hub was imported) and turns its
exceptions into one-line errors that say how to get the file another way.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from vipamin_cli.errors import InputError, Interrupted, RuntimeFailure

PAGE = "https://huggingface.co/datasets/{repo}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    offline: bool
    cache_dir: str


def settings() -> HubSettings:
    """The endpoint, offline flag and cache folder huggingface_hub would use, read from the environment now."""
    from huggingface_hub import constants

    env = os.environ
    endpoint = (env.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    offline = _truthy(env["HF_HUB_OFFLINE"]) if "HF_HUB_OFFLINE" in env else constants.is_offline_mode()
    if env.get("HF_HUB_CACHE"):
        cache = env["HF_HUB_CACHE"]
    elif env.get("HF_HOME"):
        cache = os.path.join(env["HF_HOME"], "hub")
    else:
        cache = constants.HF_HUB_CACHE
    return HubSettings(endpoint, offline, os.path.expanduser(os.path.expandvars(cache)))


def file_url(repo: str, filename: str, endpoint: str | None = None) -> str:
    return f"{(endpoint or 'https://huggingface.co')}/datasets/{repo}/resolve/main/{filename}"


def cached(repo: str, filename: str, hub: HubSettings) -> Path | None:
    """The cached copy of a repository file, if any (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub.cache_dir, repo_type="dataset")
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _offline_error(repo: str, filename: str, hub: HubSettings) -> InputError:
    return InputError(f"{filename} of {repo} is not in the Hugging Face cache ({hub.cache_dir}) and HF_HUB_OFFLINE=1 "
                      "forbids downloading it",
                      f"go online (unset HF_HUB_OFFLINE), or download {file_url(repo, filename)} on another machine "
                      "and pass it with --from FILE")


def check_force(hub: HubSettings, force: bool) -> None:
    if hub.offline and force:
        raise InputError("--force-download needs the network, but HF_HUB_OFFLINE=1 is set",
                         "unset HF_HUB_OFFLINE, or drop --force-download")


def download(repo: str, filename: str, hub: HubSettings, force: bool = False) -> Path:
    """The repository file, from the cache or downloaded into it; one-line errors for every failure."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars

    from vipamin_cli.ui import quiet

    check_force(hub, force)
    try:
        with disable_progress_bars() if quiet() else contextlib.nullcontext():  # -q: no download bar either
            path = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset", cache_dir=hub.cache_dir,
                                   endpoint=hub.endpoint, local_files_only=hub.offline, force_download=force)
    except KeyboardInterrupt:
        raise Interrupted(f"download of {filename} interrupted; nothing was unpacked",
                          "run the same command again (the download starts again)") from None
    except LocalEntryNotFoundError as exc:
        if hub.offline:
            raise _offline_error(repo, filename, hub) from None
        cause = exc.__cause__ or exc
        raise RuntimeFailure(f"cannot download {filename} of {repo} from {hub.endpoint} "
                             f"({type(cause).__name__}: {_first_line(cause)}) and it is not in the Hugging Face cache",
                             "check the network (HF_ENDPOINT, proxy settings), or download "
                             f"{file_url(repo, filename)} elsewhere and pass it with --from FILE") from None
    except RepositoryNotFoundError as exc:
        raise RuntimeFailure(f"cannot access the dataset repository {repo} on {hub.endpoint} ({_first_line(exc)})",
                             "check HF_ENDPOINT and, for a private mirror, HF_TOKEN") from None
    except EntryNotFoundError:
        raise RuntimeFailure(f"the dataset repository {repo} has no file {filename}",
                             f"see {PAGE.format(repo=repo)}; download the archive by hand and pass --from FILE") \
            from None
    except HfHubHTTPError as exc:
        raise RuntimeFailure(f"downloading {filename} of {repo} failed: {_first_line(exc)}",
                             "run the same command again later, or pass a copy with --from FILE") from None
    except Exception as exc:  # connection errors of the HTTP client, size mismatches, a full disk
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RuntimeFailure(f"no space left in the Hugging Face cache {hub.cache_dir} for {filename}",
                                 "free disk space or point HF_HUB_CACHE at a larger disk") from None
        raise RuntimeFailure(f"downloading {filename} of {repo} failed ({type(exc).__name__}: {_first_line(exc)})",
                             "run the same command again (add --force-download if it keeps failing)") from None
    return Path(path)


def list_sizes(repo: str, hub: HubSettings) -> dict[str, int]:
    """Top-level files of the repository and their sizes in bytes (one API call)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if hub.offline:
        raise InputError(f"listing {repo} needs the network, but HF_HUB_OFFLINE=1 is set",
                         "go online (unset HF_HUB_OFFLINE), or pass the archives with --from FILE")
    try:
        entries = list(HfApi(endpoint=hub.endpoint).list_repo_tree(repo, repo_type="dataset"))
    except HfHubHTTPError as exc:
        raise RuntimeFailure(f"cannot list the dataset repository {repo} on {hub.endpoint}: {_first_line(exc)}",
                             "check HF_ENDPOINT / HF_TOKEN, or pass the archives with --from FILE") from None
    except Exception as exc:  # connection errors of the HTTP client
        raise RuntimeFailure(f"cannot reach {hub.endpoint} to list {repo} ({type(exc).__name__}: {_first_line(exc)})",
                             "check the network (HF_ENDPOINT, proxy), or pass the archives with --from FILE") from None
    sizes = {}
    for entry in entries:
        size = getattr(entry, "size", None)
        lfs = getattr(entry, "lfs", None)
        if size is not None:  # folders have no size
            sizes[entry.path] = int(lfs.size if lfs is not None else size)
    return sizes


def revision_of(path: Path) -> str | None:
    """The commit a cached file came from (``.../snapshots/<commit>/<file>``)."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

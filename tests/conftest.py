"""Shared fixtures: offline hubs, a real digits export, tiny seeded backbones, a private cache."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("VIPAMIN_QUIET", "1")
# One torch thread per test process (and the commands it starts): `make test` runs two pytest-xdist
# workers on two cores, and two threads each would spin against each other. Results do not depend on it
# (tests/test_tune_digests.py compares bytes at one thread; the rest compare within one process).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache directory so no test sees another's embeddings."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("VIPAMIN_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real handwritten digits (scikit-learn), 40 per class, as train/val/test PNG folders."""
    from vipamin_cli.demo import export_digits

    return export_digits(tmp_path_factory.mktemp("digits"), per_class=40)


@pytest.fixture(scope="session")
def full_digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 1,797 digits, for the accuracy test."""
    from vipamin_cli.demo import export_digits

    return export_digits(tmp_path_factory.mktemp("digits_full"))


@pytest.fixture()
def cli():
    """Invoke the real Typer app in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from vipamin_cli.cli import app

    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    return run

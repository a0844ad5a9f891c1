"""Shared command-line options: defined once for init, tune and benchmark, grouped into help panels,
and tune's init options reach the init exactly as `vipamin init`'s do."""

from __future__ import annotations

import pytest
import typer
from typer.main import get_command

from vipamin_cli import options
from vipamin_cli.artifacts import load_artifact
from vipamin_cli.cli import app
from vipamin_cli.embed import EmbedConfig, embed_data

# Flags two commands spell alike but mean differently, each defined where it is used.
DIFFERENT_MEANINGS = {"--out": "a prompts file, a checkpoint, a results folder",
                      "--seed": "init: the init's seed; tune: the training seed",
                      "--recipe": "benchmark also takes 'own' (each method its paper's)",
                      "--backbone": "required by benchmark, optional beside --embeddings for init and tune"}
CHOICES = (options.K, options.LAMBDA, options.ORTH, options.ORTH_SCALE, options.ORTH_RCOND, options.ORTH_SPAN_TOL,
           options.SAMPLE)


def _params(command: str) -> dict[str, typer.core.TyperOption]:
    return {p.opts[0]: p for p in get_command(app).commands[command].params}


def test_options_shared_by_init_tune_and_benchmark_are_one_definition() -> None:
    init, tune, bench = _params("init"), _params("tune"), _params("benchmark")
    choices = {c.flag: c for c in CHOICES}
    for a, b in ((init, tune), (tune, bench), (init, bench)):
        for flag in set(a) & set(b) - set(DIFFERENT_MEANINGS) - set(choices) - {"--help"}:
            assert (a[flag].help, a[flag].rich_help_panel) == (b[flag].help, b[flag].rich_help_panel), flag
    for flag, choice in choices.items():  # one value for init, a list of candidates for tune and benchmark
        assert init[flag].help == f"{choice.help}. E.g. {flag} {choice.example}.", flag
        assert tune[flag].help.startswith(f"{choice.help}, or a comma list swept as init candidates"), flag
        assert tune[flag].rich_help_panel == init[flag].rich_help_panel == options.INIT
        if flag in bench:
            assert bench[flag].help == tune[flag].help
    # tune takes every init option `init` takes, but the ones it spells its own way
    assert set(init) - set(tune) == {"--method", "--deep", "--explain"}  # tune: --init, --arch vpt-deep


def test_help_panels_and_flags(cli) -> None:
    panels = ("Data", "Embedding", "Init", "Prompts and architecture", "Optimisation and schedule",
              "Sweep and selection", "VAPT", "Runtime")
    code, out, _ = cli("tune", "--help")
    assert code == 0
    at = [out.index(f"─ {p}") for p in panels]
    assert at == sorted(at), "panels in reading order"
    for command, flags in (("tune", ("--vapt-per-channel", "--vapt-scale", "--resume", "--drop-last")),
                           ("init", ("--deep", "--explain")), ("benchmark", ("--plot",))):
        code, out, _ = cli(command, "--help")
        lines = [line for line in out.splitlines() if any(f"{f} " in line for f in flags)]
        assert code == 0 and len(lines) == len(flags), (command, lines)
        assert all("<bool>" not in line for line in lines), lines
    params = _params("tune")
    assert params["--vapt-scale"].rich_help_panel == "VAPT" and params["--grid-batch"].rich_help_panel == "Runtime"
    assert all(p.rich_help_panel for f, p in params.items() if f not in ("--out", "--recipe", "--resume", "--help"))


@pytest.fixture(scope="module")
def emb(digits_dir, tmp_path_factory):
    """The small splits (80 images each): tune trains on test and validates on val here."""
    root = tmp_path_factory.mktemp("emb")
    return {s: embed_data("vit-tiny-test", str(digits_dir), split=s, out=root / f"{s}.safetensors", use_cache=False,
                          config=EmbedConfig(calib_size=24, sample_images=4)).path for s in ("val", "test")}


def test_tune_gives_its_init_options_to_the_init(emb, tmp_path, cli) -> None:
    """VIPAMIN's orthogonal options (and the rest) reach tune's init: the same prompts as `vipamin init`."""
    given = ["--k", "4", "--lambda", "0.7", "--orth", "reference", "--orth-scale", "match", "--orth-rcond",
             "reference", "--orth-span-tol", "float64", "--orth-energy", "0.95", "-p", "4"]
    code, out, err = cli("init", "--embeddings", emb["val"], "--seed", "3", *given, "--out", tmp_path / "p.st")
    assert code == 0, err
    code, out, err = cli("tune", "--embeddings", emb["val"], "--init", "vipamin", "--init-seed", "3", *given,
                         "--epochs", "1", "--warmup-epochs", "0", "--out", tmp_path / "ck.safetensors")
    assert code == 0, err
    made, used = load_artifact(tmp_path / "p.st"), load_artifact(tmp_path / "ck.prompts.safetensors")
    assert made.tensors.keys() == used.tensors.keys()
    assert all(bool((made[k] == used[k]).all()) for k in made.tensors)
    recorded = load_artifact(tmp_path / "ck.safetensors").meta["init"]["config"]
    assert {k: recorded[k] for k in ("k", "lam", "orth", "orth_scale", "orth_rcond", "orth_span_tol", "orth_energy",
                                     "seed")} == {
        "k": 4, "lam": 0.7, "orth": "reference", "orth_scale": "match", "orth_rcond": "reference",
        "orth_span_tol": "float64", "orth_energy": 0.95, "seed": 3}


def test_tune_sweeps_orthogonal_modes_as_init_candidates(emb, tmp_path, cli) -> None:
    code, _, err = cli("tune", "--embeddings", emb["test"], "--val-embeddings", emb["val"], "--init", "vipamin",
                       "--orth", "exact,reference", "--orth-rcond", "1e-3", "--k", "4", "-p", "4", "--epochs",
                       "1", "--warmup-epochs", "0", "--out", tmp_path / "ck.safetensors")
    assert code == 0, err
    sweep = load_artifact(tmp_path / "ck.safetensors").meta["sweep"]
    assert [(s["config"]["orth"], s["config"]["orth_rcond"]) for s in sweep["inits"]] == [
        ("exact", "1e-3"), ("reference", "1e-3")]
    assert sorted(r["init_index"] for r in sweep["runs"]) == [0, 1]
    code, _, err = cli("tune", "--embeddings", emb["val"], "--init", "vipamin", "--orth-rcond", "2", "-p", "4",
                       "--epochs", "1", "--warmup-epochs", "0", "--out", tmp_path / "bad.safetensors")
    assert code == 2 and "--orth-rcond '2' is not valid" in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad.safetensors").exists()


def test_benchmark_takes_orth_rcond_as_init_candidates(tmp_path, cli) -> None:
    from vipamin_cli.benchmark.runner import PRESETS, preset_protocol

    protocol = preset_protocol("vipamin", PRESETS["demo"], {"orth_rcond": ["none", "reference"]})
    assert [c.orth_rcond for c in protocol.init_configs("cpu")] == ["none", "reference"]
    code, _, err = cli("benchmark", "--suite", "testbed", "--root", tmp_path, "--backbone", "vit-tiny-test",
                       "--methods", "vipamin", "--out", tmp_path / "out", "--orth-rcond", "none,2")
    assert code == 2 and "--orth-rcond '2' is not valid" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()

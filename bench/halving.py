"""Successive halving replayed offline on a grid sweep's recorded per-epoch validation curves.

Run: ``python -m bench.halving RECORD... [--eta 3] [--min-epochs R] [--search] [--json out.json]
[--cells '*/vipamin']`` (seconds; no training). RECORD is a grid sweep's record: a tune checkpoint
(``.safetensors``, its ``sweep`` metadata), its ``<out>.sweep.json``, or a benchmark ``results.json``
(every cell, or those ``--cells`` names by shell patterns, on the cell or on ``RECORD:cell``). Each
run's history holds its validation top-1 after every epoch (``--val-every 1``, the default), and
a run trains the same whether or not the others are pruned, so the halving rule applied to these
curves (:func:`vipamin_cli.tuning.halving.replay`, the function ``tune --sweep halving`` decides
with) selects what a real halving run would select and spends what it would spend.

Per sweep it prints the candidate-epochs of the grid and of halving, the configuration each
selects, whether they agree and the selected configurations' last-epoch validation scores (the
"val regret": grid's minus halving's, in points); a benchmark cell also shows the grid's final
test top-1 (the same for halving where they agree). ``--search`` tries every (eta, R) pair over
``--etas`` and R = 1 .. epochs and lists, per pair, the share of the grid's compute, how many
sweeps agree and the mean val regret.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vipamin_cli.tuning.halving import Key, best, config_score, default_min_epochs, replay


@dataclass
class GridSweep:
    """One selection problem recorded by a grid sweep: every configuration's seeds' curves."""

    name: str
    epochs: int
    warmup_epochs: int
    curves: dict[Key, list[list[dict[str, Any]]]]
    grid_selected: Key
    tie_break: str = "smaller-lr"
    test_top1: float | None = None  # a benchmark cell's final test top-1 mean (the grid's selection)
    init_labels: dict[int, str] | None = None  # init index -> the init settings that vary, e.g. "k 8 lam 0.5"


def _init_labels(inits: list[dict[str, Any] | None]) -> dict[int, str] | None:
    """Name each init candidate by the settings that differ between them (None: one candidate)."""
    if len(inits) < 2 or any(i is None for i in inits):
        return None
    varying = [k for k in inits[0] if len({repr(i.get(k)) for i in inits}) > 1]
    return {j: " ".join(f"{k} {i[k]:g}" if isinstance(i[k], float) else f"{k} {i[k]}" for k in varying)
            for j, i in enumerate(inits)}


def _add(curves: dict[Key, list[list[dict[str, Any]]]], key: Key, run: dict[str, Any]) -> None:
    curves.setdefault(key, []).append(run["history"])


def _config(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return runs[0]["config"]


def from_tune(sweep: dict[str, Any], name: str) -> GridSweep:
    """A tune's sweep record (checkpoint metadata ``sweep`` or ``<out>.sweep.json``)."""
    if sweep.get("mode", "grid") != "grid":
        raise SystemExit(f"{name}: a {sweep['mode']} sweep, not a grid: its pruned runs have no full curves")
    curves: dict[Key, list[list[dict[str, Any]]]] = {}
    for run in sweep["runs"]:
        _add(curves, (run.get("init_index", 0), run["config"]["lr"], run["config"]["weight_decay"]), run)
    c, cfg = sweep["chosen"], _config(sweep["runs"])
    return GridSweep(name, cfg["epochs"], cfg.get("warmup_epochs", 0), curves,
                     (c.get("init_index", 0), c["lr"], c["weight_decay"]), cfg.get("tie_break", "smaller-lr"))


def from_cell(cell: dict[str, Any], name: str) -> GridSweep:
    """A benchmark cell: one tune per init candidate j (its runs keyed (j, lr, weight decay)); the
    grid picked each tune's best lr / weight decay, then the best candidate, ties to the earlier."""
    sweep = cell["sweep"]
    if sweep.get("mode", "grid") != "grid":
        raise SystemExit(f"{name}: a {sweep['mode']} cell, not a grid")
    curves: dict[Key, list[list[dict[str, Any]]]] = {}
    for j, cand in enumerate(sweep["candidates"]):
        for run in cand["runs"]:
            _add(curves, (j, run["config"]["lr"], run["config"]["weight_decay"]), run)
    chosen = [(j, c["chosen"]["lr"], c["chosen"]["weight_decay"]) for j, c in enumerate(sweep["candidates"])]
    scores = [c["score"] for c in sweep["candidates"]]
    picked = chosen[max(range(len(chosen)), key=lambda j: (scores[j], -j))]
    cfg = _config(sweep["candidates"][0]["runs"])
    return GridSweep(name, cfg["epochs"], cfg.get("warmup_epochs", 0), curves, picked,
                     cfg.get("tie_break", "smaller-lr"), cell.get("test_top1", {}).get("mean"),
                     _init_labels([c.get("init") for c in sweep["candidates"]]))


def load(path: Path) -> list[GridSweep]:
    """The grid sweeps recorded in ``path`` (a benchmark results.json: one per cell)."""
    if path.suffix == ".safetensors":
        from vipamin_cli.artifacts import read_metadata

        return [from_tune(read_metadata(path)["sweep"], path.name)]
    record = json.loads(path.read_text())
    if "cells" in record:
        return [from_cell(cell, key) for key, cell in sorted(record["cells"].items())
                if cell.get("sweep", {}).get("mode", "grid") == "grid"]
    return [from_tune(record, path.name)]


def compare(sweep: GridSweep, eta: int, min_epochs: int | None) -> dict[str, Any]:
    """Grid vs halving on one sweep: compute, selections, agreement, last-epoch val scores."""
    first = min_epochs if min_epochs is not None else default_min_epochs(sweep.epochs, eta, sweep.warmup_epochs)
    first = min(first, sweep.epochs)
    rep = replay(sweep.curves, sweep.epochs, eta, first, sweep.tie_break)
    val = {k: config_score(h, sweep.epochs) for k, h in sweep.curves.items()}
    return {"name": sweep.name, "configurations": len(sweep.curves), "epochs": sweep.epochs, "eta": eta,
            "min_epochs": first, "rungs": rep.rungs, "grid_candidate_epochs": rep.grid_candidate_epochs,
            "halving_candidate_epochs": rep.candidate_epochs,
            "share": rep.candidate_epochs / rep.grid_candidate_epochs,
            "grid_selected": list(sweep.grid_selected), "halving_selected": list(rep.selected),
            "agree": rep.selected == sweep.grid_selected,
            "grid_val": val[sweep.grid_selected], "halving_val": val[rep.selected],
            "val_regret": val[sweep.grid_selected] - val[rep.selected], "grid_test_top1": sweep.test_top1,
            "rule_on_curves": list(best(val, sweep.tie_break)),
            "grid_selected_label": _key(sweep.grid_selected, sweep.init_labels),
            "halving_selected_label": _key(rep.selected, sweep.init_labels)}


def search(sweeps: list[GridSweep], etas: list[int]) -> list[dict[str, Any]]:
    """Every (eta, R) pair (R from 1 to the shortest sweep's epochs) over all sweeps: the share of the
    grid's compute, how many sweeps select the grid's configuration, the mean val regret."""
    rows = []
    for eta in etas:
        for first in range(1, min(s.epochs for s in sweeps) + 1):
            res = [compare(s, eta, first) for s in sweeps]
            rows.append({"eta": eta, "min_epochs": first, "rungs": res[0]["rungs"],
                         "share": sum(r["halving_candidate_epochs"] for r in res)
                         / sum(r["grid_candidate_epochs"] for r in res),
                         "agree": sum(r["agree"] for r in res), "sweeps": len(res),
                         "mean_val_regret": statistics.fmean(r["val_regret"] for r in res)})
    return sorted(rows, key=lambda r: (r["share"], -r["agree"]))


def _key(k: Key | list[Any], labels: dict[int, str] | None = None) -> str:
    init = labels[k[0]] if labels else f"init {k[0]}"
    return f"{init} lr {k[1]:g} wd {k[2]:g}"


def table(rows: list[dict[str, Any]]) -> str:
    """The per-sweep comparison as a markdown table."""
    lines = ["| sweep | configs | rungs | candidate-epochs grid | halving (share) | selected grid | "
             "selected halving | agree | val grid / halving | grid test top-1 |", "|" + "---|" * 10]
    for r in rows:
        test = f"{r['grid_test_top1']:.2f}" if r["grid_test_top1"] is not None else "-"
        lines.append(f"| {r['name']} | {r['configurations']} | {r['rungs']} | {r['grid_candidate_epochs']} | "
                     f"{r['halving_candidate_epochs']} ({r['share']:.2f}) | {r['grid_selected_label']} | "
                     f"{r['halving_selected_label']} | {'yes' if r['agree'] else 'no'} | "
                     f"{r['grid_val']:.2f} / {r['halving_val']:.2f} | {test} |")
    return "\n".join(lines)


def search_table(rows: list[dict[str, Any]], goal_share: float = 1 / 3, goal_regret: float = 1.0) -> str:
    """The (eta, R) search as a markdown table; ``*``: at most ``goal_share`` of the grid's compute
    with a mean val regret of at most ``goal_regret`` points."""
    lines = ["| eta | R | rungs | share of grid compute | sweeps agreeing | mean val regret | goal |",
             "|" + "---|" * 7]
    for r in rows:
        ok = r["share"] <= goal_share + 1e-12 and r["mean_val_regret"] <= goal_regret
        lines.append(f"| {r['eta']} | {r['min_epochs']} | {r['rungs']} | {r['share']:.3f} | "
                     f"{r['agree']}/{r['sweeps']} | {r['mean_val_regret']:.2f} | {'*' if ok else ''} |")
    return "\n".join(lines)


def _named(cells: str | None, record: Path, name: str) -> bool:
    """Whether ``--cells`` keeps this sweep: a pattern matches its name or ``RECORD:name``."""
    return cells is None or any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(f"{record}:{name}", pat)
                                for pat in cells.split(","))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="+", type=Path, help="tune checkpoints, sweep.json files, benchmark results.json")
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--min-epochs", type=int, default=None, help="the first rung R (default: tune's default)")
    ap.add_argument("--search", action="store_true", help="also try every (eta, R) pair")
    ap.add_argument("--etas", default="2,3,4", help="the etas --search tries (comma list)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("--cells", default=None,
                    help="comma list of shell patterns: only the sweeps so named, or so named as RECORD:name "
                         "(e.g. '*/random,count/*' or 'old/results.json:*/random')")
    args = ap.parse_args(argv)
    sweeps = [s for p in args.records for s in load(p) if _named(args.cells, p, s.name)]
    if not sweeps:
        raise SystemExit("no grid sweep in the records" + (f" named {args.cells}" if args.cells else ""))
    try:
        rows = [compare(s, args.eta, args.min_epochs) for s in sweeps]
    except ValueError as e:  # a grid run with --val-every > 1 has no score at some rungs
        raise SystemExit(f"error: {e}") from None
    print(table(rows))
    total = sum(r["halving_candidate_epochs"] for r in rows) / sum(r["grid_candidate_epochs"] for r in rows)
    print(f"\nhalving (eta {args.eta}): {total:.3f} of the grid's candidate-epochs; "
          f"{sum(r['agree'] for r in rows)}/{len(rows)} select the grid's configuration; mean val regret "
          f"{statistics.fmean(r['val_regret'] for r in rows):.2f} points")
    result: dict[str, Any] = {"eta": args.eta, "min_epochs": args.min_epochs, "sweeps": rows}
    if args.search:
        try:
            result["search"] = search(sweeps, [int(e) for e in args.etas.split(",")])
        except ValueError as e:
            raise SystemExit(f"error: {e} (the search needs every epoch validated)") from None
        print("\n" + search_table(result["search"]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""`vipamin info`: what an artifact is, where it came from, and its tensor shapes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .artifacts import describe_tensors, load_artifact, read_metadata

# Metadata fields too long to print in the table (they stay in --json).
_LONG = ("samples", "history")


def artifact_summary(path: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """Metadata plus tensor shapes; with ``verify`` the tensors are loaded and their digest checked."""
    p = Path(path)
    meta = load_artifact(p).meta if verify else read_metadata(p)
    return {"path": str(p), "size_bytes": p.stat().st_size, "verified": verify, "metadata": meta,
            "tensors": describe_tensors(p)}


def _short(value: Any, limit: int = 100) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from .ui import escape, out_console

    meta = summary["metadata"]
    console = out_console()
    title = (f"{escape(summary['path'])}  ({meta.get('kind')}, schema {meta.get('schema_version')}, "
             f"{summary['size_bytes']:,} bytes)")
    table = Table(title=title, show_header=True)
    table.add_column("field")
    table.add_column("value")
    for key in sorted(meta):
        value = meta[key]
        if key in _LONG and isinstance(value, list):
            table.add_row(escape(key), f"{len(value)} entries (see --json)")
        elif isinstance(value, dict):
            for sub in sorted(value):
                if isinstance(value[sub], list) and len(value[sub]) > 12:
                    head = escape(_short(value[sub][:6]))
                    table.add_row(escape(f"{key}.{sub}"), f"{len(value[sub])} entries: {head}")
                else:
                    table.add_row(escape(f"{key}.{sub}"), escape(_short(value[sub])))
        else:
            table.add_row(escape(key), escape(_short(value)))
    if summary["verified"]:
        table.add_row("integrity", Text("digest verified", style="green"))
    console.print(table)
    if isinstance(meta.get("sweep"), dict) and meta["sweep"].get("mode") == "halving":
        console.print(_rung_table(meta["sweep"]))
    tensors = Table(title="tensors")
    for col in ("name", "dtype", "shape"):
        tensors.add_column(col)
    for name, t in summary["tensors"].items():
        tensors.add_row(escape(name), t["dtype"], " x ".join(map(str, t["shape"])) or "scalar")
    console.print(tensors)


def _rung_table(sweep: dict[str, Any]) -> Any:
    """A halving sweep's rung history, one row per run: what each candidate trained and where it stopped."""
    from rich.table import Table

    from .tuning.halving import rung_history, sweep_headline

    table = Table(title=f"sweep rungs: {sweep_headline(sweep)}")
    for col in ("lr", "weight decay", "init", "seed", "epochs", "pruned at", "score at rungs (epoch:score)"):
        table.add_column(col)
    for run in sweep.get("runs", []):
        c = run.get("config", {})
        table.add_row(f"{c.get('lr', 0):g}", f"{c.get('weight_decay', 0):g}", str(run.get("init_index", 0)),
                      str(c.get("seed", "-")), *rung_history(run))
    return table

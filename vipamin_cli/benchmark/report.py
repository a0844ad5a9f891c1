"""The benchmark's outputs in the papers' form: a markdown table (methods x tasks, group means) and a plot.

Each cell is the test top-1 mean ± std over the final seeds. Group means average the task means of
a group (as the VTAB-1k papers do); the overall mean averages the group means when the suite has
groups, so a large group does not dominate.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..artifacts import atomic_path


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """(task names in column order, group names, per method: task -> (mean, std), group -> mean, overall)."""
    tasks = [t for t in results["tasks"] if any(f"{t}/{m}" in results["cells"] for m in results["methods"])]
    group_of = {t: results["tasks"][t]["group"] for t in tasks}
    groups = [g for g in dict.fromkeys(group_of[t] for t in tasks)]
    rows: dict[str, dict[str, Any]] = {}
    for method in results["methods"]:
        cells = {t: results["cells"][f"{t}/{method}"]["test_top1"] for t in tasks
                 if f"{t}/{method}" in results["cells"]}
        if not cells:
            continue
        group_means = {}
        for g in groups:
            members = [cells[t]["mean"] for t in tasks if group_of[t] == g and t in cells]
            complete = len(members) == sum(1 for t in tasks if group_of[t] == g)
            group_means[g] = statistics.fmean(members) if members and complete else None
        known = [v for v in group_means.values() if v is not None]
        overall = statistics.fmean(known) if known and len(known) == len(groups) else None
        rows[method] = {"tasks": cells, "groups": group_means, "overall": overall}
    return tasks, groups, rows


def markdown_table(results: dict[str, Any]) -> str:
    tasks, groups, rows = summary_rows(results)
    header = ["method", *tasks, *groups, "mean"]
    lines = [f"Test top-1 (%), mean ± std over the final seeds; suite `{results['suite']}`, backbone "
             f"`{results['backbone']}`.", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for method, row in rows.items():
        cells = [f"{row['tasks'][t]['mean']:.2f} ± {row['tasks'][t]['std']:.2f}" if t in row["tasks"] else "-"
                 for t in tasks]
        cells += [f"{row['groups'][g]:.2f}" if row["groups"][g] is not None else "-" for g in groups]
        cells.append(f"{row['overall']:.2f}" if row["overall"] is not None else "-")
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group of bars per task, one bar per method, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, _, rows = summary_rows(results)
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) + 2), 4.0))
    for i, (method, row) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j, t in enumerate(tasks) if t in row["tasks"]]
        ys = [row["tasks"][t]["mean"] for t in tasks if t in row["tasks"]]
        es = [row["tasks"][t]["std"] for t in tasks if t in row["tasks"]]
        ax.bar(xs, ys, width, yerr=es, label=method, capsize=2)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=30, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{results['suite']} · {results['backbone']}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out: Path, plot_png: bool = True) -> dict[str, Path]:
    """Write ``table.md`` (and ``results.png``) next to ``results.json``."""
    paths = {"table": out / "table.md"}
    with atomic_path(paths["table"]) as tmp:
        tmp.write_text(markdown_table(results), encoding="utf-8")
    if plot_png:
        paths["plot"] = out / "results.png"
        plot(results, paths["plot"])
    return paths

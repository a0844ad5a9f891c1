"""`vipamin benchmark`: a suite of tasks x methods run with one protocol, reported as the papers' tables.

``suites`` knows the tasks (testbed, VTAB-1k, FGVC few-shot) and their groups, ``runner`` runs the
cells (embed once per task; sweep on the small split, final runs with seeds, test top-1) and keeps
``results.json`` resumable, ``linear`` is the linear-probe baseline on pooled frozen features and
``report`` writes the markdown table and the plot.
"""

from .runner import BenchmarkSpec, run_benchmark, run_cell
from .suites import SUITES, Suite, Task, resolve_suite

__all__ = ["SUITES", "BenchmarkSpec", "Suite", "Task", "resolve_suite", "run_benchmark", "run_cell"]

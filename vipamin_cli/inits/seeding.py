"""Which init draw each training run starts from.

The VIPAMIN, SPT and VPT authors seed their code once, globally, with the training seed, so every
run (each lr of the sweep, each final seed) also redraws its init's random parts: VPT's random
prompts, VIPAMIN's query prompts and fresh vectors, SPT's token draws and k-means seeding. vipamin
does the same by default: a run's init seed is its training seed, so the spread over final seeds
includes the init's own variance. An explicit init seed (`tune --init-seed`, ``follow=False``) pins
one draw for every run instead. Prompts read from a file (`tune --prompts`) are never redrawn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

FOLLOWS = "the training seed"  # how the checkpoint and the benchmark name the default rule


@dataclass(frozen=True)
class InitSlots:
    """The inits one training stage computes: one per distinct (init candidate, init seed)."""

    configs: list[Any]  # InitConfig of each slot (its seed is the init seed)
    candidates: list[int]  # the init candidate (init-grid index) of each slot
    of_point: list[int]  # the slot each grid point starts from
    suffixes: list[str]  # the slot's prompts-file suffix: <out>.prompts<suffix>.safetensors
    follow: bool

    def named(self) -> list[tuple[Any, str]]:
        """(InitConfig, prompts-file suffix) of each slot."""
        return list(zip(self.configs, self.suffixes, strict=True))

    def first_slot(self, candidate: int) -> int:
        """The first slot of an init candidate (its prompts file stands for the candidate)."""
        return self.candidates.index(candidate)

    def record(self, runs: list[dict[str, Any]], points: list[int], sources: list[dict[str, Any]]) -> None:
        """Write each run's init seed and init digest into its record (``points``: its grid point)."""
        for run, point in zip(runs, points, strict=True):
            source = sources[self.of_point[point]]  # the init actually used (a --prompts file's own config)
            run["init_seed"] = (source.get("config") or {}).get("seed")  # None: no init (--arch full)
            run["init_digest"] = source.get("digest")

    def rule(self, from_file: bool) -> str:
        """How the runs' init seeds were chosen, for the checkpoint."""
        return "the --prompts file's" if from_file else FOLLOWS if self.follow else "pinned (--init-seed)"


def init_slots(inits: list[Any], candidates: list[int], seeds: list[int], follow: bool,
               suffix: str = "", numbered: bool = False) -> InitSlots:
    """The slots of a stage whose grid points start from ``candidates[i]`` and train with ``seeds[i]``.

    With ``follow`` each (candidate, training seed) gets its own init, drawn with that seed; else one
    init per candidate with its own seed. Suffixes: ``suffix``, then ``-{candidate}`` when
    ``numbered`` (several candidates), then ``-s{seed}`` when a candidate has several init seeds.
    """
    keys: list[tuple[int, int]] = []
    of_point = []
    for cand, seed in zip(candidates, seeds, strict=True):
        key = (cand, int(seed) if follow else int(inits[cand].seed))
        if key not in keys:
            keys.append(key)
        of_point.append(keys.index(key))
    configs, names = [], []
    for cand, seed in keys:
        configs.append(replace(inits[cand], seed=seed))
        several = sum(1 for c, _ in keys if c == cand) > 1
        names.append(suffix + (f"-{cand}" if numbered else "") + (f"-s{seed}" if several else ""))
    return InitSlots(configs=configs, candidates=[c for c, _ in keys], of_point=of_point, suffixes=names,
                     follow=follow)

"""How much the inits amplify float32 rounding of the calibration statistics (docs/methods.md §3).

Run: ``python -m bench.init_stability --testbed testbed --out init-stability.md`` (the testbed from
`vipamin data make-testbed testbed`). For each task it embeds ``train800val200`` twice with the
built-in ``mae-vit-tiny-mnist``: once with torch's default CPU kernels and once with the AVX2 switch
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``; on a CPU without AVX512 the two are the same).
Then, per init, it reports the relative difference of the prompts computed from the two files
(``kernels``) and the largest relative move of the prompts when every calibration statistic is
multiplied by (1 + 1e-6 n), n standard normal, over ``--draws`` draws (``noise``), for VIPAMIN with the
span rank rule ``float64`` (the former one) and ``stable`` (the default), and for SPT's k-means (its
tokens, cached in bfloat16 by default, are perturbed after an exact upcast to float32).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
TASKS = ("mnist", "count", "orientation", "mnist-noise")


def embed(testbed: Path, task: str, out: Path, extra_env: dict[str, str]) -> Path:
    """``vipamin embed`` of the task's train800val200 in a fresh process (the kernels are chosen at start)."""
    if not out.exists():
        env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} | extra_env
        subprocess.run([sys.executable, "-m", "vipamin_cli", "-q", "embed", "-b", "mae-vit-tiny-mnist", "-d",
                        str(testbed / task), "--split", "train800val200", "--no-cache", "--out", str(out)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    return out


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


def _perturbed(ctx, seed: int, level: float):
    from vipamin_cli.inits import InitContext

    gen = torch.Generator().manual_seed(seed)

    def noisy(v: torch.Tensor) -> torch.Tensor:
        """bfloat16 tokens are perturbed in float32 (exact upcast), else the noise would round away."""
        if not v.is_floating_point():
            return v
        dtype = torch.float32 if v.dtype == torch.bfloat16 else v.dtype
        return (v.double() * (1 + level * torch.randn(v.shape, generator=gen, dtype=torch.float64))).to(dtype)

    return InitContext(vit=ctx.vit, tokens=noisy(ctx.tokens), stats={k: noisy(v) for k, v in ctx.stats.items()},
                       num_prefix=ctx.num_prefix, patch=ctx.patch, device=ctx.device)


def rows(default: Path, avx2: Path, draws: int) -> list[tuple[str, str, float, float, str]]:
    """(init, rule, kernels, noise, span ranks) per init configuration."""
    from vipamin_cli.artifacts import load_artifact
    from vipamin_cli.backbones import load_backbone_from_identity
    from vipamin_cli.inits import InitConfig, context_from_embeddings, run_init

    arts = [load_artifact(p, "embeddings") for p in (default, avx2)]
    vit = load_backbone_from_identity(arts[0].meta["backbone"]).model
    ctxs = [context_from_embeddings(a, vit, torch.device("cpu")) for a in arts]
    configs = [(f"vipamin {orth}{' deep' if deep else ''}", rule,
                InitConfig(method="vipamin", prompt_length=10, k=8, lam=0.5, orth=orth, deep=deep, orth_span_tol=rule))
               for orth in ("exact", "reference", "exact-ln") for deep in (False, True)
               for rule in ("float64", "stable")]
    configs += [(f"spt kmeans{' deep' if deep else ''}", "-", InitConfig(method="spt", prompt_length=10, deep=deep))
                for deep in (False, True)]
    out = []
    for name, rule, cfg in configs:
        base, info = run_init(ctxs[0], cfg)
        other, _ = run_init(ctxs[1], cfg)
        moved = max(_relative(base["prompts"], run_init(_perturbed(ctxs[0], s, 1e-6), cfg)[0]["prompts"])
                    for s in range(draws))
        blocks = info["blocks"] if cfg.deep else [info]
        ranks = "/".join(str(b["rank_used"]) for b in blocks) if "rank_used" in blocks[0] else "-"
        out.append((name, rule, _relative(base["prompts"], other["prompts"]), moved, ranks))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default="testbed")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--work", default="init-stability-work", help="where the embeddings are kept")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--out", default="init-stability.md")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = ["| task | init | span rule | ranks (per block) | kernels | 1e-6 noise (max) |",
             "|---|---|---|---|---|---|"]
    for task in args.tasks.split(","):
        default = embed(Path(args.testbed), task, work / f"{task}-default.safetensors", {})
        avx2 = embed(Path(args.testbed), task, work / f"{task}-avx2.safetensors", AVX2)
        for name, rule, kernels, noise, ranks in rows(default, avx2, args.draws):
            lines.append(f"| {task} | {name} | {rule} | {ranks} | {kernels:.1e} | {noise:.1e} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

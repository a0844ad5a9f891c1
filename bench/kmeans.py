"""SPT k-means speed and quality: greedy k-means++ (today) against the plain k-means++ it replaced.

Run: ``python -m bench.kmeans [--tokens 50000] [--dim 768] [--k 100] [--device cpu]``. The data are
ViT-B-sized tokens drawn as Gaussian clusters of unequal size (a stand-in for real patch tokens,
which are clustered too); both implementations see the same points and iteration cap.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vipamin_cli.inits.spt import _lloyd, kmeans


def legacy_kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator,
                  tol: float = 1e-6) -> tuple[torch.Tensor, float]:
    """The previous implementation: plain k-means++ (one candidate per centre), a single run."""
    n = x.shape[0]
    x = x.float()
    sq = (x * x).sum(1)
    size = max(64 * k, 8192)
    pool = torch.randperm(n, generator=generator)[:size].to(x.device) if n > size else torch.arange(n, device=x.device)
    xs, sqs = x[pool], sq[pool]
    first = int(torch.randint(len(pool), (1,), generator=generator))
    centres = [xs[first]]
    closest = (sqs - 2 * xs @ xs[first] + sqs[first]).clamp_min(0)
    for _ in range(1, k):
        weights = closest.cpu().double()
        pick = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        centres.append(xs[pick])
        closest = torch.minimum(closest, (sqs - 2 * xs @ xs[pick] + sqs[pick]).clamp_min(0))
    return _lloyd(x, sq, torch.stack(centres), iters, tol)  # the Lloyd loop is unchanged: only the seeding differs


def clustered_tokens(n: int, dim: int, clusters: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen) * 2.0
    weights = torch.rand(clusters, generator=gen) + 0.2
    labels = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=gen)
    return centres[labels] + torch.randn(n, dim, generator=gen)


def bench_kmeans(tokens: int = 50_000, dim: int = 768, k: int = 100, iters: int = 100, device: str = "cpu",
                 repeat: int = 2) -> dict[str, float]:
    dev = torch.device(device)
    x = clustered_tokens(tokens, dim, clusters=2 * k).to(dev)

    def run(fn):  # best of ``repeat`` wall times, and the inertia
        times, inertia = [], 0.0
        for _ in range(repeat):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            _, inertia = fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        return min(times), inertia

    old_s, old_inertia = run(lambda: legacy_kmeans(x, k, iters, torch.Generator().manual_seed(0)))
    new_s, new_inertia = run(lambda: kmeans(x, k, 0, iters=iters))
    return {"tokens": tokens, "dim": dim, "k": k, "device": device, "threads": torch.get_num_threads(),
            "legacy_s": old_s, "greedy_s": new_s, "ratio": new_s / old_s,
            "legacy_inertia": old_inertia, "greedy_inertia": new_inertia}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(bench_kmeans(args.tokens, args.dim, args.k, args.iters, args.device, args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

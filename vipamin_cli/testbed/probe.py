"""Linear probe on frozen pooled features: does a backbone's pretraining help, measured in seconds.

A closed-form ridge classifier (one-hot targets, standardised features, the ridge strength picked
on the validation split) on the backbone's pooled features, as the recipe pools them. It is how
``docs/backbones.md`` compares ``mae-vit-tiny-mnist`` with the same architecture's random weights.

    python -m vipamin_cli.testbed.probe --root TESTBED [--backbone mae-vit-tiny-mnist] [--tasks mnist,count]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from vipamin_cli.backbones import Backbone, load_backbone

LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@torch.no_grad()
def pooled_features(backbone: Backbone, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, D) features of normalised images (N, 3, H, W) with the backbone's recipe pooling."""
    from vipamin_cli.prompted import PromptedViT

    model = PromptedViT(backbone.model, None, pool=backbone.spec.pool).eval()
    return torch.cat([model.forward_images(images[i:i + batch]) for i in range(0, len(images), batch)])


def _ridge_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    targets = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
    reg = lam * len(x) * torch.eye(xb.shape[1], dtype=x.dtype)
    reg[-1, -1] = 0.0  # no penalty on the bias
    return torch.linalg.solve(xb.T @ xb + reg, xb.T @ targets)


def _predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) @ w).argmax(dim=1)


def ridge_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int,
                lambdas: Sequence[float] = LAMBDAS) -> dict[str, float]:
    """Pick the ridge strength on val, refit on train + val, return val and test top-1 (in %)."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    prep = [((t - mu) / sd).double() for t in (train_x, val_x, test_x)]
    tr, va, te = prep
    scores = [(_predict(_ridge_fit(tr, train_y, num_classes, lam), va) == val_y).double().mean().item()
              for lam in lambdas]
    best = max(range(len(lambdas)), key=lambda i: (scores[i], -i))
    w = _ridge_fit(torch.cat([tr, va]), torch.cat([train_y, val_y]), num_classes, lambdas[best])
    test_acc = (_predict(w, te) == test_y).double().mean().item()
    return {"val_top1": 100 * scores[best], "test_top1": 100 * test_acc, "lambda": float(lambdas[best])}


def _load_split(root: Path, split: str, backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    from vipamin_cli.data import make_transform, open_dataset

    spec = backbone.spec
    image_set = open_dataset(str(root), split=split)
    tf = make_transform("vtab", backbone.img_size, spec.mean, spec.std, spec.interpolation)
    images = torch.stack([tf(image_set.load_image(i)) for i in range(len(image_set))])
    return images, torch.tensor([s.label for s in image_set.samples])


def probe_task(folder: str | Path, backbones: dict[str, Backbone]) -> dict[str, dict[str, float]]:
    """Ridge-probe each backbone on one VTAB-layout task (train800 / val200 / test)."""
    folder = Path(folder)
    out = {}
    for label, bb in backbones.items():
        data = {s: _load_split(folder, s, bb) for s in ("train800", "val200", "test")}
        feats = {s: pooled_features(bb, x) for s, (x, _) in data.items()}
        num_classes = int(max(int(y.max()) for _, y in data.values())) + 1
        out[label] = ridge_probe(feats["train800"], data["train800"][1], feats["val200"], data["val200"][1],
                                 feats["test"], data["test"][1], num_classes)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="a testbed made by `vipamin data make-testbed`")
    ap.add_argument("--backbone", default="mae-vit-tiny-mnist")
    ap.add_argument("--weights", default=None, help="a weights file instead of the shipped one")
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from vipamin_cli.testbed.make import read_manifest

    torch.set_num_threads(args.threads)
    manifest = read_manifest(args.root)
    names = args.tasks.split(",") if args.tasks else [t["name"] for t in manifest["tasks"]]
    bbs = {"pretrained": load_backbone(args.backbone, weights=args.weights),
           "random": load_backbone(args.backbone, weights="random")}
    results = {}
    for name in names:
        results[name] = probe_task(Path(args.root) / name, bbs)
        r = results[name]
        print(f"{name}: pretrained {r['pretrained']['test_top1']:.1f}  random {r['random']['test_top1']:.1f}",
              flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

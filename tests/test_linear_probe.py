"""The linear probe honours the recipe's head init (SPT: trunc-normal 0.02) and SPT's head weight decay,
schedule and dropped last batch (issue 22, item 6b)."""

from __future__ import annotations

import torch

from vipamin_cli.benchmark.linear import _head, train_linear
from vipamin_cli.train import TuneConfig, build_model


def test_head_init_follows_the_recipe_and_equals_tunes() -> None:
    trunc = _head(64, 10, TuneConfig(head_init="trunc-normal", seed=3)).weight.detach()
    kaiming = _head(64, 10, TuneConfig(seed=3)).weight.detach()
    assert abs(float(trunc.std()) - 0.02) < 0.003 and abs(float(kaiming.std()) - (2 / 10) ** 0.5) < 0.05
    assert float(_head(64, 10, TuneConfig(head_init="zeros")).weight.detach().abs().max()) == 0.0
    from vipamin_cli.backbones import load_backbone

    vit = load_backbone("vit-tiny-test").model
    for init in ("trunc-normal", "kaiming"):
        cfg = TuneConfig(head_init=init, seed=3)
        tuned = build_model(vit, torch.zeros(2, 64), 10, cfg, "cls", (4, 4)).head.weight.detach()
        torch.testing.assert_close(_head(64, 10, cfg).weight.detach(), tuned, rtol=0, atol=0)


def test_head_weight_decay_schedule_and_drop_last_by_hand() -> None:
    """Zero features give the weight a zero gradient, so AdamW only decays it: w <- w (1 - lr_s * wd) per step."""
    cfg = TuneConfig(epochs=3, warmup_epochs=1, batch_size=4, lr=0.5, weight_decay=0.01, head_weight_decay=0.5,
                     schedule_step="iteration", lr_floor=1e-3, lr_scaling="none", drop_last=True, seed=1,
                     head_init="trunc-normal")
    x, y = torch.zeros(10, 8), torch.arange(10) % 3
    w0 = _head(8, 3, cfg).weight.detach().clone()
    head, run = train_linear((x, y), None, 3, cfg)
    steps = 10 // 4  # the last partial batch (2 images) is dropped
    factor = 1.0
    for epoch in range(3):
        for step in range(steps):
            t, warm, total = epoch * steps + step, steps, 3 * steps
            frac = t / warm if t < warm else 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (t - warm) / (total - warm))))
            factor *= 1 - (1e-3 + (0.5 - 1e-3) * float(frac)) * 0.5
    torch.testing.assert_close(head.weight.detach(), w0 * factor, rtol=1e-5, atol=1e-7)
    assert factor < 0.9 and len(run["history"]) == 3

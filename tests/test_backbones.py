"""Backbone registry, local weight loading (safetensors, MAE and MoCo-v3 layouts), offline failures."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from vipamin_cli.backbones import REGISTRY, load_backbone, resolve_spec
from vipamin_cli.errors import InputError

REQUIRED = ["mae-vit-b", "mae-vit-l", "mae-vit-h", "moco-v3-vit-b", "dino-vit-b", "dino-vit-s", "dinov2-vit-b",
            "dinov2-vit-b-reg", "sup-vit-b-in21k", "vit-tiny-test"]


def _trained_like_state() -> dict[str, torch.Tensor]:
    """Weights that differ from the seeded init, so a successful load is visible in the outputs."""
    ref = load_backbone("vit-tiny-test").model
    gen = torch.Generator().manual_seed(123)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in ref.state_dict().items()}


def _features(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.forward_features(x)


def test_registry_has_the_named_backbones() -> None:
    for name in REQUIRED:
        assert name in REGISTRY
    assert REGISTRY["mae-vit-b"].hub_tag == "vit_base_patch16_224.mae"
    assert REGISTRY["mae-vit-b"].pool == "mean-all"
    assert REGISTRY["moco-v3-vit-b"].requires_weights and REGISTRY["moco-v3-vit-b"].hub_tag is None
    assert REGISTRY["sup-vit-b-in21k"].mean == (0.5, 0.5, 0.5)
    assert (REGISTRY["dinov2-vit-b"].patch, REGISTRY["mae-vit-h"].width, REGISTRY["mae-vit-l"].depth) == (14, 1280, 24)


def test_unknown_backbone_names_the_fix() -> None:
    with pytest.raises(InputError, match="unknown backbone 'vit-nope'.*vipamin backbones"):
        resolve_spec("vit-nope")


def test_timm_name_resolves_to_a_spec() -> None:
    spec = resolve_spec("timm:vit_tiny_patch16_224")
    assert (spec.width, spec.depth, spec.patch, spec.img_size) == (192, 12, 16, 224)
    with pytest.raises(InputError, match="not a VisionTransformer"):
        resolve_spec("timm:resnet18")


def test_tiny_backbone_is_seeded_and_frozen() -> None:
    a, b = load_backbone("vit-tiny-test"), load_backbone("vit-tiny-test")
    assert a.fingerprint == b.fingerprint
    assert not a.model.training
    assert not any(p.requires_grad for p in a.model.parameters())
    assert (a.model.embed_dim, len(a.model.blocks), a.num_patches, a.num_prefix_tokens) == (64, 4, 16, 1)
    reg = load_backbone("vit-tiny-reg-test")
    assert reg.num_prefix_tokens == 3 and reg.fingerprint != a.fingerprint


def test_local_weights_safetensors(tmp_path) -> None:
    state = _trained_like_state()
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    loaded = load_backbone("vit-tiny-test", weights=path)
    direct = VisionTransformer(num_classes=0, **REGISTRY["vit-tiny-test"].model_kwargs).eval()
    direct.load_state_dict(state)
    torch.testing.assert_close(_features(loaded.model), _features(direct), rtol=0, atol=0)
    assert loaded.weights_source == f"file:{path.resolve()}"
    assert loaded.fingerprint != load_backbone("vit-tiny-test").fingerprint


@pytest.mark.parametrize("layout", ["moco-linear", "moco-pretrain", "mae"])
def test_local_weights_foreign_layouts(tmp_path, layout: str) -> None:
    state = _trained_like_state()
    if layout == "moco-linear":  # linear-vit-b-300ep.pth.tar: module. prefix, a 1000-class head
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()} | {
            "module.head.weight": torch.zeros(1000, 64), "module.head.bias": torch.zeros(1000)}, "epoch": 300}
        path = tmp_path / "linear-vit.pth.tar"
    elif layout == "moco-pretrain":  # the pretraining file: base and momentum encoders, projector, predictor
        payload = {"state_dict": {f"module.base_encoder.{k}": v for k, v in state.items()} | {
            f"module.momentum_encoder.{k}": v * 0 for k, v in state.items()} | {
            "module.base_encoder.head.0.weight": torch.zeros(4096, 64),
            "module.predictor.0.weight": torch.zeros(4096, 256)}}
        path = tmp_path / "vit-b-300ep.pth.tar"
    else:  # mae_pretrain_vit_base.pth: weights under "model"
        payload = {"model": state}
        path = tmp_path / "mae_pretrain.pth"
    torch.save(payload, path)
    loaded = load_backbone("vit-tiny-test", weights=path)
    direct = VisionTransformer(num_classes=0, **REGISTRY["vit-tiny-test"].model_kwargs).eval()
    direct.load_state_dict(state)
    torch.testing.assert_close(_features(loaded.model), _features(direct), rtol=0, atol=0)


def test_weights_for_another_architecture_are_refused(tmp_path) -> None:
    other = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    path = tmp_path / "other.safetensors"
    save_file(other.state_dict(), str(path))
    with pytest.raises(InputError, match=r"does not fit backbone 'vit-tiny-test'"):
        load_backbone("vit-tiny-test", weights=path)


def test_not_a_checkpoint_and_missing_file(tmp_path) -> None:
    bogus = tmp_path / "weights.pth"
    bogus.write_text("not a checkpoint")
    with pytest.raises(InputError, match=r"weights.pth is a text file, not a checkpoint"):
        load_backbone("vit-tiny-test", weights=bogus)
    bad_st = tmp_path / "weights.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="is a binary file of unknown format, not a readable safetensors file"):
        load_backbone("vit-tiny-test", weights=bad_st)
    with pytest.raises(InputError, match="weights file not found"):
        load_backbone("vit-tiny-test", weights=tmp_path / "missing.safetensors")


def test_pickled_objects_are_never_unpickled(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": Evil()}}, path)
    with pytest.raises(InputError, match="pickles the Python object print, which vipamin never "
                       "unpickles"):
        load_backbone("vit-tiny-test", weights=path)


def test_hub_backbone_offline_fails_fast_naming_weights() -> None:
    start = time.monotonic()
    with pytest.raises(InputError, match=r"mae-vit-b.*no network; pass --weights PATH"):
        load_backbone("mae-vit-b")
    assert time.monotonic() - start < 10
    with pytest.raises(InputError, match=r"moco-v3-vit-b' has no hub copy.*--weights"):
        load_backbone("moco-v3-vit-b")

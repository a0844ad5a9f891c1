"""vipamin: visual prompt tuning with smart prompt initialisation for frozen ViTs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Bumped whenever the layout of an artifact changes in a way older readers cannot handle.
SCHEMA_VERSION = 2  # 2: the digest covers the metadata too

__all__ = ["SCHEMA_VERSION", "__version__", "load_classifier"]


def load_classifier(checkpoint: Any, device: Any = "cpu", run: int | None = None, **kwargs: Any) -> Any:
    """A tuned checkpoint as a ``torch.nn.Module`` (see :func:`vipamin_cli.classifier.load_classifier`).

    Imported lazily, so that ``import vipamin_cli`` (and ``vipamin --help``) stays free of torch.
    """
    from .classifier import load_classifier as _load

    return _load(checkpoint, device=device, run=run, **kwargs)

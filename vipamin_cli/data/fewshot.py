"""Few-shot subsets: exactly K images per class, drawn reproducibly from a seed."""

from __future__ import annotations

import random

from vipamin_cli.errors import InputError

from .images import ImageSet, Sample


def _sample_order(sample: Sample) -> tuple[int, int, str]:
    if sample.key.startswith("hf:") and sample.key[3:].isdigit():
        return (sample.label, int(sample.key[3:]), "")
    return (sample.label, 0, sample.key)


def _few_shot(image_set: ImageSet, shots: int, seed: int) -> list[Sample]:
    """Exactly ``shots`` samples per class, drawn reproducibly from ``seed``."""
    by_class: dict[int, list[Sample]] = {i: [] for i in range(len(image_set.class_names))}
    for s in image_set.samples:
        by_class[s.label].append(s)
    smallest = min(len(m) for m in by_class.values())
    for label, members in by_class.items():
        if len(members) < shots:
            fix = (
                f"pass --shots {smallest} or less, or use a larger split"
                if smallest > 0
                else "use a split that has images of every class, or leave out --shots"
            )
            raise InputError(
                f"--shots {shots} is more than class '{image_set.class_names[label]}' has "
                f"({len(members)} images in split '{image_set.split}')",
                fix,
            )
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=_sample_order)
        chosen.extend(rng.sample(members, shots))
    return sorted(chosen, key=_sample_order)

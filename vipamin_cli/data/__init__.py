"""Image data sources: image folders, VTAB-1k list files, FGVC json splits and Hugging Face datasets.

Everything here turns user input into an :class:`ImageSet` (a list of ``(key, label)`` samples plus a way to
load each one as an RGB PIL image) or raises :class:`InputError` naming the bad input and the fix. One module
per source (``folders``, ``vtab``, ``fgvc``, ``hf``), plus ``images`` (loading), ``fewshot`` and
``transforms``. Heavy libraries (torch, numpy, datasets) are imported inside functions so that
``vipamin --help`` stays fast.
"""

from .fgvc import FGVC_SPLITS
from .folders import FOLDER_SPLITS
from .images import IMAGE_EXTENSIONS, ImageSet, Sample, load_rgb
from .sources import open_dataset
from .transforms import ImageTransform, TorchImages, make_transform, preprocessing_info, resolve_resize
from .vtab import VTAB_ALIASES, VTAB_LIST_FILES

__all__ = [
    "FGVC_SPLITS",
    "FOLDER_SPLITS",
    "IMAGE_EXTENSIONS",
    "VTAB_ALIASES",
    "VTAB_LIST_FILES",
    "ImageSet",
    "ImageTransform",
    "Sample",
    "TorchImages",
    "load_rgb",
    "make_transform",
    "open_dataset",
    "preprocessing_info",
    "resolve_resize",
]

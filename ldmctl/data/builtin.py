"""Built-in data sets, by name, that work offline: photos, digits, Fashion-MNIST, synthetic.

The digits and Fashion-MNIST sets live in :mod:`ldmctl.data.labelled` (Debian packages).

``builtin:photos`` is made of the real photographs that ship inside scikit-image's package data
folder (no download) and scikit-learn's sample images. There are only a handful, so it yields
random crops with a virtual epoch of :data:`PHOTOS_EPOCH_LENGTH` items. :data:`HOLDOUT` photos
are never used by ``builtin:photos``: they form ``builtin:photos-holdout``, the evaluation set
(each is at least 256 px on its short side, so 256x256 center crops are real pixels).

To add a data set, add a ``(cfg, seed) -> Dataset`` function to :data:`BUILTINS`; call
:func:`require` for any optional package so that a missing one names its install command.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldmctl.config import DataConfig
from ldmctl.data.images import Item, crop_and_flip, item_rng, pil_to_tensor, resize_short_side, to_rgb
from ldmctl.data.labelled import open_digits, open_fashion
from ldmctl.data.shapes import ShapesDataset
from ldmctl.data.synthetic import SyntheticDataset
from ldmctl.errors import DataError

PHOTOS_EPOCH_LENGTH = 2048


@dataclass(frozen=True)
class Photo:
    """One bundled photograph: where it comes from and what it shows."""

    name: str  # our name, used in paths ("scikit-image:astronaut") and holdout_photos()
    package: str  # import name of the package that ships it: "skimage" or "sklearn"
    source: str  # skimage.data function, or sklearn sample image file name
    caption: str
    size: tuple[int, int]  # (width, height), for the docs and a test

    @property
    def path(self) -> str:
        """Return where the photo comes from, e.g. ``scikit-image:astronaut``."""
        return f"{_DIST[self.package]}:{self.source}"


TRAIN_PHOTOS: tuple[Photo, ...] = (
    Photo("camera", "skimage", "camera", "a black and white photo of a cameraman", (512, 512)),
    Photo("chelsea", "skimage", "chelsea", "a photo of a tabby cat", (451, 300)),
    Photo("coins", "skimage", "coins", "a black and white photo of old coins", (384, 303)),
    Photo("moon", "skimage", "moon", "a black and white photo of the moon's surface", (512, 512)),
    Photo("rocket", "skimage", "rocket", "a photo of a rocket on a launch pad at dusk", (640, 427)),
    Photo(
        "hubble_deep_field", "skimage", "hubble_deep_field", "a photo of galaxies in the Hubble deep field", (1000, 872)
    ),
    Photo("retina", "skimage", "retina", "a photo of a human retina", (1411, 1411)),
    Photo(
        "immunohistochemistry", "skimage", "immunohistochemistry", "a microscope photo of stained tissue", (512, 512)
    ),
    Photo("brick", "skimage", "brick", "a black and white photo of a brick wall", (512, 512)),
    Photo("grass", "skimage", "grass", "a black and white photo of grass", (512, 512)),
    Photo("gravel", "skimage", "gravel", "a black and white photo of gravel", (512, 512)),
    Photo("motorcycle", "skimage", "stereo_motorcycle", "a photo of a red motorcycle in a workshop", (741, 500)),
    Photo("flower", "sklearn", "flower.jpg", "a photo of an orange dahlia flower", (640, 427)),
)

# Colour photos of Debian's opencv-doc (examples/data). Stereo/flow partners of a kept photo
# (aloeR, leuvenB, graf3, rubberwhale2, aero3), logos, text, charts and paintings are left out.
OPENCV_PHOTOS: tuple[Photo, ...] = tuple(
    Photo(n, "opencv-doc", f, c, s)
    for n, f, c, s in (
        ("aero", "aero1.jpg", "a photo of a street with a parked car", (640, 480)),
        ("aloe", "aloeL.jpg", "a photo of an aloe plant", (1282, 1110)),
        ("apple", "apple.jpg", "a photo of an apple", (512, 512)),
        ("board", "board.jpg", "a photo of a cluttered desk", (640, 480)),
        ("building", "building.jpg", "a photo of an office building", (868, 600)),
        ("ela", "ela_original.jpg", "a photo of a city street", (902, 770)),
        ("fruits", "fruits.jpg", "a photo of fruits", (512, 480)),
        ("graffiti", "graf1.png", "a photo of a graffiti wall", (800, 640)),
        ("home", "home.jpg", "a photo of a living room", (512, 384)),
        ("leuven", "leuvenA.jpg", "a photo of houses along a street", (751, 563)),
        ("messi", "messi5.jpg", "a photo of a football player on a pitch", (548, 342)),
        ("orange", "orange.jpg", "a photo of an orange", (512, 512)),
        ("rubberwhale", "rubberwhale1.png", "a photo of toys on a table", (584, 388)),
        ("smarties", "smarties.png", "a photo of coloured sweets", (413, 356)),
        ("squirrel", "squirrel_cls.jpg", "a photo of a squirrel", (535, 426)),
        ("stuff", "stuff.jpg", "a photo of objects on a table", (640, 480)),
        ("left", "left.jpg", "a photo of a room", (612, 459)),
    )
)
OPENCV_HOLDOUT: tuple[Photo, ...] = (
    Photo("baboon", "opencv-doc", "baboon.jpg", "a photo of a mandrill", (512, 512)),
    Photo("butterfly", "opencv-doc", "butterfly.jpg", "a photo of a butterfly on a flower", (493, 356)),
)
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

HOLDOUT: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "astronaut", "a photo of an astronaut", (512, 512)),
    Photo("coffee", "skimage", "coffee", "a photo of a cup of coffee on a saucer", (600, 400)),
    Photo("china", "sklearn", "china.jpg", "a photo of a Chinese temple by a lake", (640, 427)),
)

_DIST = {"skimage": "scikit-image", "sklearn": "scikit-learn", "opencv-doc": "opencv-doc"}  # -> package name


def require(module: str, install: str, *, needed_by: str) -> ModuleType:
    """Import ``module`` or raise DataError whose hint is ``install`` (a pip/apt-get command)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"{needed_by} needs the Python module {module!r}, which is not installed", hint=install
        ) from None


@functools.cache
def load_photo(photo: Photo) -> Image.Image:
    """Load one bundled photo as full-size RGB (cached; treat the result as read-only)."""
    needed_by = "builtin:photos-holdout" if photo in HOLDOUT else "builtin:photos"
    if photo.package == "opencv-doc":
        path = OPENCV_DATA / photo.source
        if not path.is_file():
            kind = "builtin:opencv-photos-holdout" if photo in OPENCV_HOLDOUT else "builtin:opencv-photos"
            raise DataError(
                f"{kind} needs {path}, from the Debian package opencv-doc, which is not installed",
                hint="apt-get install opencv-doc",
            )
        with Image.open(path) as img:
            return to_rgb(img.convert("RGB"))
    if photo.package == "skimage":
        data = require("skimage.data", "pip install scikit-image", needed_by=needed_by)
        arr = getattr(data, photo.source)()
        if photo.source == "stereo_motorcycle":
            arr = arr[0]  # (left, right, disparity): the left view
    else:
        datasets = require("sklearn.datasets", "pip install scikit-learn", needed_by=needed_by)
        arr = datasets.load_sample_image(photo.source)
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def holdout_photos() -> list[tuple[str, Image.Image]]:
    """Return (name, full-size RGB image) for each holdout photo, in the documented order."""
    return [(p.name, load_photo(p).copy()) for p in HOLDOUT]


class PhotoDataset(Dataset):
    """Crops of a fixed list of photos: item i crops photo ``i % len(photos)``.

    With ``length`` given, the data set has that many items per (virtual) epoch; otherwise one
    item per photo. Crop offset and flip come from ``item_rng(seed, epoch, i)``.
    """

    def __init__(
        self, name: str, photos: Sequence[Photo], cfg: DataConfig, *, seed: int = 0, length: int | None = None
    ) -> None:
        self.name, self.photos, self.cfg, self.seed, self.epoch = name, tuple(photos), cfg, seed, 0
        self.length = len(self.photos) if length is None else length
        self.class_names: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._images = [self._prepare(load_photo(p)) for p in self.photos]

    def _prepare(self, img: Image.Image) -> Image.Image:
        """Resize once, up front: to ``size`` if cfg.resize, or up to ``size`` if smaller."""
        if self.cfg.resize or min(img.size) < self.cfg.size:
            return resize_short_side(img, self.cfg.size)
        return img

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def summary(self) -> str:
        """Describe the data set in one line."""
        names = ", ".join(p.name for p in self.photos)
        return f"{self.name}: {self.length} crops of {len(self.photos)} photos ({names})"

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Item:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        k = index % len(self.photos)
        img = crop_and_flip(self._images[k], self.cfg, item_rng(self.seed, self.epoch, index))
        photo = self.photos[k]
        return {"image": pil_to_tensor(img), "label": -1, "caption": photo.caption, "path": photo.path}


def _photos(cfg: DataConfig, seed: int) -> Dataset:
    return PhotoDataset("builtin:photos", TRAIN_PHOTOS, cfg, seed=seed, length=PHOTOS_EPOCH_LENGTH)


def _photos_holdout(cfg: DataConfig, seed: int) -> Dataset:
    return PhotoDataset("builtin:photos-holdout", HOLDOUT, cfg, seed=seed)


def _opencv_photos(cfg: DataConfig, seed: int) -> Dataset:
    return PhotoDataset("builtin:opencv-photos", OPENCV_PHOTOS, cfg, seed=seed, length=PHOTOS_EPOCH_LENGTH)


def _opencv_holdout(cfg: DataConfig, seed: int) -> Dataset:
    return PhotoDataset("builtin:opencv-photos-holdout", OPENCV_HOLDOUT, cfg, seed=seed)


def _synthetic(cfg: DataConfig, seed: int) -> Dataset:
    return SyntheticDataset(cfg, seed=seed)


BUILTINS: dict[str, Callable[[DataConfig, int], Dataset]] = {
    "digits": lambda cfg, seed: open_digits(cfg, seed, holdout=False),
    "digits-holdout": lambda cfg, seed: open_digits(cfg, seed, holdout=True),
    "fashion": lambda cfg, seed: open_fashion(cfg, seed, test=False),
    "fashion-test": lambda cfg, seed: open_fashion(cfg, seed, test=True),
    "shapes": lambda cfg, seed: ShapesDataset(cfg, seed=seed),
    "photos": _photos,
    "photos-holdout": _photos_holdout,
    "opencv-photos": _opencv_photos,
    "opencv-photos-holdout": _opencv_holdout,
    "synthetic": _synthetic,
}


def open_builtin(name: str, cfg: DataConfig, *, seed: int = 0) -> Dataset:
    """Build the built-in data set ``name`` (without the ``builtin:`` prefix)."""
    if name not in BUILTINS:
        choices = [f"builtin:{n}" for n in sorted(BUILTINS)]
        raise DataError(f"unknown built-in data set 'builtin:{name}'; choose one of {choices}")
    return BUILTINS[name](cfg, seed)


__all__ = [
    "BUILTINS",
    "HOLDOUT",
    "OPENCV_HOLDOUT",
    "OPENCV_PHOTOS",
    "PHOTOS_EPOCH_LENGTH",
    "TRAIN_PHOTOS",
    "Photo",
    "PhotoDataset",
    "holdout_photos",
    "load_photo",
    "open_builtin",
    "require",
]

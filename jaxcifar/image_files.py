"""Image files -> uint8 model input: one decode-and-resize rule for `jaxcifar.predict` and for
training on a folder of your own images (`--config.data.image_folder=DIR`).

The rule, so that a file predicted on is preprocessed exactly as the same file was for training:
  1. the EXIF orientation is applied (phone photos are often stored sideways);
  2. the image becomes RGB: transparency (RGBA, LA, palette with a transparent colour) is
     composited on a white background, greyscale and palette images are converted;
  3. it is resized to size x size (`data.image_size`, 32 for the CIFAR recipes) with Pillow's
     bilinear filter, which averages over the whole footprint when shrinking, so large photos
     are not aliased. The aspect ratio is not kept: a non-square image is squeezed, not
     cropped, so nothing is cut out of view.
Images of one fixed size from a TFDS dataset are resized on the device instead
(`augment.resize`, the same antialiased bilinear filter; the two agree within one grey level).

Folder layout (as torchvision's ImageFolder and TFDS's `tfds.folder_dataset.ImageFolder`):
`DIR/<split>/<class>/*.jpg|*.jpeg|*.png`, e.g. DIR/train/cat/1.jpg and DIR/test/cat/7.png.
The class names are the train split's folder names, sorted (label i = i-th name). Other
files (.txt, .DS_Store, ...) are ignored. Images without labels, for methods that learn from
them, go in `DIR/unlabeled/` (any image files, in any subfolders: their names mean nothing).

Why not TFDS's ImageFolder: it decodes with TensorFlow (another decoder than predict's, and
no TensorFlow-free path), cannot batch images of different sizes, takes its labels from the
folders of every split together (a test class missing from train becomes a class nobody
trained), keeps empty class folders as classes, and reports a corrupt file as a TensorFlow
op error without its path. Here each of those is a clear error naming the folder or file.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # the file types TFDS's ImageFolder reads
UNLABELED_FOLDER = "unlabeled"
BACKGROUND = (255, 255, 255)
MAX_ERRORS_LISTED = 10
# What reading one bad file raises (missing, not an image, truncated, too large); `describe_error` words it.
READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, with transparent pixels composited on white (plain
    `convert('RGB')` would drop alpha and expose whatever colour hides under it, often black)."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_model_image(image: Image.Image, size: int) -> np.ndarray:
    """A Pillow image -> uint8 (size, size, 3) model input (the rule in the module docstring)."""
    image = to_rgb(ImageOps.exif_transpose(image))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def read_image(file: str | pathlib.Path | BinaryIO, size: int) -> np.ndarray:
    """An image file (a path, or an open binary file such as an upload) -> uint8 (size, size, 3)."""
    with Image.open(file) as image:
        return to_model_image(image, size)


def array_to_model_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """A decoded uint8 HWC array (1 or 3 channels) -> the same rule's (size, size, 3)."""
    return to_model_image(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels), size)


# ----- a folder of your own images -----
def folder_class_names(root: str | pathlib.Path, train_split: str) -> tuple[str, ...]:
    """The class folder names of ROOT/<train_split>, sorted: label i is the i-th name."""
    names = tuple(sorted(p.name for p in _class_dirs(root, train_split)))
    if len(names) < 2:
        raise ValueError(f"{pathlib.Path(root) / train_split} has {len(names)} class folder(s) {list(names)}; "
                         "a classifier needs at least two, one folder of images per class.")
    return names


def read_folder_split(root: str | pathlib.Path, split: str, class_names: tuple[str, ...],
                      size: int) -> tuple[np.ndarray, np.ndarray]:
    """ROOT/<split>/<class>/* as (uint8 (n, size, size, 3) images, int32 labels), labelled by the
    position of each class in `class_names` (the train split's). Every problem is an error
    naming the folder or file: a class not in train, an empty class folder, an unreadable image."""
    class_dirs = _class_dirs(root, split)
    unknown = sorted(p.name for p in class_dirs if p.name not in class_names)
    if unknown:
        raise ValueError(f"{pathlib.Path(root) / split} has class folders {unknown} that the train split does "
                         f"not have (its classes: {list(class_names)}); the model cannot learn a class it "
                         "never sees. Add them to train, or remove them here.")
    paths, labels = [], []
    for class_dir in sorted(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            ignored = sorted(p.name for p in class_dir.iterdir())[:MAX_ERRORS_LISTED]
            raise ValueError(f"Class folder {class_dir} holds no {'/'.join(IMAGE_SUFFIXES)} images"
                             + (f" (ignored: {ignored})" if ignored else "") + "; add images or remove the folder.")
        paths += files
        labels += [class_names.index(class_dir.name)] * len(files)
    return _read_all(paths, size, pathlib.Path(root) / split), np.asarray(labels, np.int32)


def read_unlabeled_folder(root: str | pathlib.Path, size: int) -> np.ndarray | None:
    """The images of ROOT/unlabeled/ (any subfolders, sorted paths) as uint8 (n, size, size, 3),
    or None when there is no such folder. No labels are read: there are none."""
    folder = pathlib.Path(root) / UNLABELED_FOLDER
    if not folder.is_dir():
        return None
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images; add images or remove the folder.")
    return _read_all(paths, size, folder)


def _read_all(paths: list[pathlib.Path], size: int, where: pathlib.Path) -> np.ndarray:
    """The images at `paths`, decoded in parallel; every unreadable one is reported at once."""
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow decodes without the GIL
        images = list(pool.map(lambda path: _read_or_error(path, size), paths))
    errors = [image for image in images if isinstance(image, str)]
    if errors:
        raise ValueError(f"{len(errors)} of {len(paths)} images in {where} could not be "
                         "read (fix or remove them):\n  " + "\n  ".join(errors[:MAX_ERRORS_LISTED]))
    return np.stack(images)


def _class_dirs(root: str | pathlib.Path, split: str) -> list[pathlib.Path]:
    """The class folders of ROOT/<split>; refuses a missing split folder and loose images in it."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.image_folder={str(root)!r} is not a directory; expected "
                                f"{root}/train/<class>/*.jpg (and {root}/test/<class>/*.jpg).")
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(f"{split_dir} does not exist (folders in {root}: {present}); expected "
                                f"{split_dir}/<class>/*.jpg, one folder per class. A missing test folder can be "
                                "replaced by a validation split held out of train: --config.data.validation_fraction=0.1 "
                                "--config.data.eval_split=''.")
    loose = sorted(p.name for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise ValueError(f"{split_dir} holds images outside class folders ({loose[:MAX_ERRORS_LISTED]}); "
                         f"move each into {split_dir}/<class>/.")
    class_dirs = [p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not class_dirs:
        raise ValueError(f"{split_dir} holds no class folders; expected {split_dir}/<class>/*.jpg, "
                         "one folder per class.")
    return class_dirs


def _read_or_error(path: pathlib.Path, size: int) -> np.ndarray | str:
    """The image, or 'PATH: why' for one that cannot be read (collected, so all are reported at once)."""
    try:
        return read_image(path, size)
    except READ_ERRORS as e:
        return f"{path}: {describe_error(e)}"


def describe_error(error: Exception) -> str:
    """A one-line reason a file could not be read, without a traceback."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image Pillow can read (unknown format or corrupt file)"
    return f"could not read image: {error}"

"""What a dataset on disk is, and whether it can be used: fingerprints and up-front checks.

A dataset read from files (an ImageNet-format folder, torchvision's downloaded files) is named in
cache keys by its *fingerprint*: a hash of the relative path, size and modification time of every
file under its folder. Deleting, adding or replacing an image gives a new fingerprint, so a model
or relevance computed on the old folder is never reused for the new one; no image is decoded.

``check_image_folder`` looks at an image folder before any work: it exists, has one sub-folder per
class, each class has at least ``MIN_PER_CLASS`` images (enough for the four stratified splits),
and every file opens as an image; each problem is named with its file.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

# Smallest number of images per class with which the stratified 60/10/15/15 split of
# ``data.load_dataset`` gives every class at least one image in each of its four splits.
MIN_PER_CLASS = 10
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def fingerprint(root: str | Path) -> str:
    """sha256 (hex) of ``relative path, size, mtime_ns`` of every file under ``root``, sorted by path."""
    root = Path(root)
    h = hashlib.sha256()
    for path in _files(root):
        st = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def check_image_folder(root: str | Path, min_per_class: int = MIN_PER_CLASS, verify: bool = True) -> dict[str, int]:
    """Refuse an unusable image folder before any work; return ``{class: images}`` when usable.

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` listing every problem: no
    class sub-folders, classes with fewer than ``min_per_class`` images, files that do not open
    as images (each named; only with ``verify``, which opens every file -- the profile check counts
    images only, the loader verifies them). Checked once per process for a given fingerprint."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected a folder with one sub-folder per class")
    return dict(_check(str(root.resolve()), fingerprint(root), min_per_class, verify))


@functools.lru_cache(maxsize=16)
def _check(root: str, _fingerprint: str, min_per_class: int, verify: bool = True) -> tuple[tuple[str, int], ...]:
    from PIL import Image

    classes = sorted((d for d in os.scandir(root) if d.is_dir()), key=lambda d: d.name)
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders; expected <root>/<class>/<image>")
    counts, bad = {}, []
    for entry in classes:
        images = [p for p in _files(Path(entry.path)) if p.suffix.lower() in IMAGE_EXTENSIONS]
        counts[entry.name] = len(images)
        for path in images if verify else []:
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as err:  # PIL raises many types for a broken file
                bad.append(f"{path.relative_to(root)} ({type(err).__name__})")
    problems = []
    few = {c: n for c, n in counts.items() if n < min_per_class}
    if few:
        problems.append(
            f"classes with fewer than {min_per_class} images (needed for the train/validation/inference/test "
            f"splits): {few}"
        )
    if bad:
        problems.append(f"files that do not open as images ({len(bad)}): " + ", ".join(bad))
    if problems:
        raise ValueError(f"image folder {root} cannot be used:\n  " + "\n  ".join(problems))
    return tuple(counts.items())

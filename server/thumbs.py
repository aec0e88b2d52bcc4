"""Hover thumbnails: an ``image`` metadata column turned into small PNGs, cached.

The column may hold, per instance, the encoded bytes of an image (PNG, JPEG, or anything
Pillow reads) or a path to an image file, relative to the dataset directory or absolute
(``bigembed ingest`` keeps a column named ``image`` as metadata, whichever it holds). A
missing value (null, empty) means that instance has no image.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import BigembedError, InputError

log = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
THUMB_PX = 96
MIN_PX, MAX_PX = 8, 256
#: image files larger than this are not opened for a thumbnail
MAX_FILE_BYTES = 64 * 1024 * 1024
#: pixels an image may have (Pillow's decompression-bomb guard, made an error)
MAX_PIXELS = 64_000_000
CACHE_ITEMS = 4096


class NoImage(BigembedError):
    """An instance has no image, or its image cannot be read (answered with 404)."""


def _open(value, base_dir: Path):
    """A Pillow image from bytes or a path (relative to ``base_dir``); raises NoImage."""
    from PIL import Image, UnidentifiedImageError

    if value is None or (isinstance(value, float) and not np.isfinite(value)) or \
            type(value).__name__ == "NAType":  # pandas' missing value in string columns
        raise NoImage("no image")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise NoImage("no image (empty bytes)")
        src, what = io.BytesIO(data), f"{len(data)} bytes of image data"
    elif isinstance(value, (str, os.PathLike)):
        if not str(value).strip():
            raise NoImage("no image (empty path)")
        p = Path(value)
        p = p if p.is_absolute() else base_dir / p
        try:
            size = p.stat().st_size
        except OSError as e:
            raise NoImage(f"image file {p} cannot be read: {e.strerror or e}") from None
        if not p.is_file():
            raise NoImage(f"image path {p} is not a file")
        if size > MAX_FILE_BYTES:
            raise NoImage(f"image file {p} is {size} bytes, over the {MAX_FILE_BYTES} limit")
        src, what = p, f"image file {p}"
    else:
        raise NoImage(f"the image column holds {type(value).__name__}, expected bytes or a path")
    try:
        img = Image.open(src)  # reads the header only; pixels are decoded in thumbnail_png
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise NoImage(f"{what} is not a readable image ({e})") from None
    if img.width * img.height > MAX_PIXELS:
        raise NoImage(f"{what}: {img.width}x{img.height} pixels is too large for a thumbnail")
    return img, what


def thumbnail_png(value, *, base_dir, size: int = THUMB_PX) -> bytes:
    """PNG bytes of ``value`` (image bytes or a path) scaled to fit ``size`` x ``size``.

    Small images (an 8 x 8 digit) are enlarged with nearest-neighbour sampling so their
    pixels stay crisp; large ones are reduced with Lanczos. The aspect ratio is kept.
    """
    img, what = _open(value, Path(base_dir))
    with img:
        return _scaled_png(img, what, size)


def _scaled_png(img, what: str, size: int) -> bytes:
    from PIL import Image, ImageOps

    try:
        # A JPEG decodes straight at a reduced scale (no smaller than size x size), as
        # Pillow's own thumbnail() does: a 4000 px photo never decodes at full size.
        img.draft(img.mode if img.mode in ("RGB", "L") else "RGB", (size, size))
        img = ImageOps.exif_transpose(img)
        if img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info
                              else "RGB")
        scale = size / max(img.width, img.height)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        img = img.resize((w, h), Image.NEAREST if scale >= 1 else Image.LANCZOS,
                         reducing_gap=None if scale >= 1 else 2.0)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise NoImage(f"{what} is not a readable image ({e})") from None
    return buf.getvalue()


class Thumbnails:
    """Thumbnails of one dataset's ``image`` column, made on demand and kept (LRU).

    ``column``: array of shape (n,) (bytes, paths or None); ``base_dir``: where relative
    paths start (the dataset directory).
    """

    def __init__(self, column, base_dir, *, cache_items: int = CACHE_ITEMS):
        self.column = column
        self.base_dir = Path(base_dir)
        self.cache_items = int(cache_items)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def png(self, id: int, size: int = THUMB_PX) -> bytes:
        """PNG bytes of instance ``id``'s thumbnail; raises :class:`NoImage` when it has none."""
        if not MIN_PX <= size <= MAX_PX:
            raise InputError(f"parameter 'size' must be in {MIN_PX}..{MAX_PX}, got {size}")
        key = (int(id), int(size))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            out = thumbnail_png(self.column[int(id)], base_dir=self.base_dir, size=size)
        except NoImage as e:
            raise NoImage(f"id {id}: {e}") from None
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > self.cache_items:
                self._cache.popitem(last=False)
        return out

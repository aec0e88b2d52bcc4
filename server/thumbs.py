"""Hover thumbnails: an ``image`` metadata column turned into small PNGs, cached.

The column may hold, per instance, the encoded bytes of an image (PNG, JPEG, or anything
Pillow reads) or a path to an image file (``bigembed ingest`` keeps a column named ``image``
as metadata, whichever it holds). A missing value (null, empty) means that instance has no
image.

Paths are data, not trusted: a relative path is resolved under the *media root* (the dataset
directory unless ``serve --media-root DIR`` names another), an absolute one must lie inside
it, and so must the file after symlinks are followed. Nothing outside the root is opened (or
even looked at: a path that leaves it lexically is refused before any system call), and
error messages name paths relative to the root, never absolute ones.
"""

from __future__ import annotations

import io
import logging
import os
import stat
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


def _inside(root: Path, p: Path) -> bool:
    return p == root or root in p.parents


def _resolve(value: str, base_dir) -> tuple[Path, str]:
    """The real path of image path ``value`` under the media root ``base_dir`` and its name
    to show (relative to the root); raises NoImage for a path outside the root, before or
    after following symlinks."""
    root = Path(os.path.abspath(base_dir))
    real_root = Path(os.path.realpath(root))
    given = Path(os.path.normpath(value if os.path.isabs(value) else os.path.join(root, value)))
    # ``..`` or an absolute path elsewhere is refused before any system call touches it
    for r in (root, real_root):
        if _inside(r, given):
            shown = given.relative_to(r).as_posix()
            break
    else:
        raise NoImage("image path is outside the media root")
    real = Path(os.path.realpath(given))
    if not _inside(real_root, real):
        raise NoImage(f"image path {shown!r} leads outside the media root (a symlink)")
    return real, shown


def _open(value, base_dir: Path):
    """A Pillow image from bytes or a path under ``base_dir`` (the media root); raises NoImage."""
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
        value = os.fspath(value)
        if not str(value).strip():
            raise NoImage("no image (empty path)")
        if "\0" in value:
            raise NoImage("image path holds a NUL character")
        p, shown = _resolve(value, base_dir)
        try:
            # O_NOFOLLOW: the last component checked above cannot be swapped for a symlink
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise NoImage(f"image file {shown!r} cannot be read: {e.strerror or 'error'}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NoImage(f"image path {shown!r} is not a file")
        if st.st_size > MAX_FILE_BYTES:
            os.close(fd)
            raise NoImage(f"image file {shown!r} is {st.st_size} bytes, over the "
                          f"{MAX_FILE_BYTES} limit")
        src, what = os.fdopen(fd, "rb"), f"image file {shown!r}"
    else:
        raise NoImage(f"the image column holds {type(value).__name__}, expected bytes or a path")
    try:
        img = Image.open(src)  # reads the header only; pixels are decoded in thumbnail_png
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        src.close()
        raise NoImage(f"{what} is not a readable image ({_short(e)})") from None
    if img.width * img.height > MAX_PIXELS:
        img.close()
        src.close()
        raise NoImage(f"{what}: {img.width}x{img.height} pixels is too large for a thumbnail")
    return img, what, src


def _short(e: Exception) -> str:
    """An error's message without any absolute path in it (Pillow names the file)."""
    import re

    return re.sub(r"(?<![\w.])/[^\s'\"]+", "<path>", str(e))


def thumbnail_png(value, *, base_dir, size: int = THUMB_PX) -> bytes:
    """PNG bytes of ``value`` (image bytes or a path under ``base_dir``, the media root)
    scaled to fit ``size`` x ``size``.

    Small images (an 8 x 8 digit) are enlarged with nearest-neighbour sampling so their
    pixels stay crisp; large ones are reduced with Lanczos. The aspect ratio is kept.
    """
    img, what, src = _open(value, Path(base_dir))
    with src, img:  # Pillow leaves a file object it was given open
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
        raise NoImage(f"{what} is not a readable image ({_short(e)})") from None
    return buf.getvalue()


class Thumbnails:
    """Thumbnails of one dataset's ``image`` column, made on demand and kept (LRU).

    ``column``: array of shape (n,) (bytes, paths or None); ``base_dir``: the media root,
    where relative paths start and outside which nothing is opened (the dataset directory,
    or ``serve --media-root``).
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

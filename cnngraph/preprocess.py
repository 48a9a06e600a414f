"""How an image file becomes a network's input tensor: the spec's optional `preprocess` block and
the image decoding behind `cnngraph predict`.

The steps are torchvision's classic classification transform, in its order and with its rounding:
`Resize(resize)` (shorter side, or [h, w]), `CenterCrop(center_crop)`, `ToTensor()` (here: times
`scale`), `Normalize(mean, std)`. Images are decoded with Pillow (the `images` extra) as
torchvision's folder loader does: EXIF orientation applied, then converted to RGB (or L), which
turns palette, CMYK, 16-bit and alpha images into plain 8-bit channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from .errors import CnnGraphError, InputError
from .ops.base import PositiveInt, Strict

MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (a 1 GB RGBA image's pixels)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
RESAMPLING = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}
CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}


def _size_pair(value):
    if isinstance(value, list) and len(value) != 2:
        raise ValueError(f"must be one number or [height, width], got {len(value)} numbers")
    return value


class Preprocess(Strict):
    """From an image file to the input tensor, as torchvision's Resize, CenterCrop, ToTensor and
    Normalize do."""
    resize: PositiveInt | list[PositiveInt] | None = Field(
        None, description="One number: the shorter side becomes this, keeping the aspect ratio; "
                          "[height, width]: exactly this size. Default: no resize.")
    center_crop: PositiveInt | list[PositiveInt] | None = Field(
        None, description="Crop the centre to this (one number: a square; or [height, width]).")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field("bilinear", description="Of the resize.")
    scale: float = Field(1 / 255, gt=0, description="Multiplies the 0..255 pixel values (ToTensor's 1/255).")
    mean: list[float] | None = Field(None, min_length=1, description="Subtracted per channel (in `color`'s order), "
                                                                  "after `scale`.")
    std: list[float] | None = Field(None, min_length=1, description="Divides per channel, after `mean`.")
    color: Literal["RGB", "BGR", "L"] = Field("RGB", description='Channel order; "L": one grey channel.')

    _pairs = field_validator("resize", "center_crop")(_size_pair)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std):
        if any(not s > 0 for s in std):
            raise ValueError("every std must be greater than 0")
        return std

    def output_size(self) -> tuple[int, int] | None:
        """(H, W) of the tensor it makes, or None when that depends on the image's aspect ratio."""
        for size in (self.center_crop, self.resize if isinstance(self.resize, list) else None):
            if size is not None:
                return (size, size) if isinstance(size, int) else (size[0], size[1])
        return None

    def problem_with(self, shape: tuple[int, ...]) -> tuple[str, str] | None:
        """(field, what is wrong) when it cannot make the input of per-sample `shape`; else None."""
        if len(shape) != 3:
            return "color", f"needs an image input [C, H, W], the network's input is {list(shape)}"
        c, h, w = shape
        if CHANNELS[self.color] != c:
            return "color", f'"{self.color}" gives {CHANNELS[self.color]} channel(s), the input has {c}'
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values is not None and len(values) not in (1, c):
                return field, f"has {len(values)} values; give 1 or one per channel ({c})"
        size = self.output_size()
        if size is None:
            return "center_crop", (f"the images' size would depend on their aspect ratio: give center_crop "
                                   f"(or resize as [height, width]) to make the input's {h}x{w}")
        if size != (h, w):
            return "center_crop" if self.center_crop is not None else "resize", \
                f"makes {size[0]}x{size[1]} images, the input is {h}x{w}"
        return None

    def __call__(self, image) -> np.ndarray:
        """A decoded Pillow image -> the float32 (C, H, W) input tensor."""
        from PIL import Image

        resample = getattr(Image.Resampling, RESAMPLING[self.interpolation])
        if self.resize is not None:
            image = image.resize(_resized(image.size, self.resize), resample)
        if self.center_crop is not None:
            image = _center_crop(image, self.center_crop)
        x = np.asarray(image, dtype=np.float32)
        x = x[:, :, None] if x.ndim == 2 else x
        if self.color == "BGR":
            x = x[:, :, ::-1]
        x = x.transpose(2, 0, 1) * np.float32(self.scale)
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)[:, None, None]
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray(x, np.float32)


def _resized(size: tuple[int, int], resize: int | list[int]) -> tuple[int, int]:
    """Pillow's (width, height) after torchvision's Resize: the shorter side to `resize`, the longer
    scaled and truncated (int), as torchvision computes it."""
    if isinstance(resize, list):
        return resize[1], resize[0]
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _center_crop(image, crop: int | list[int]):
    """torchvision's CenterCrop: the window's corner rounded as it rounds; a crop larger than the
    image pads it with zeros first (symmetric, the odd pixel on the right and bottom)."""
    from PIL import Image

    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    w, h = image.size
    if cw > w or ch > h:
        padded = Image.new(image.mode, (max(w, cw), max(h, ch)))
        padded.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        image, (w, h) = padded, padded.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return image.crop((left, top, left + cw, top + ch))


def decode_image(path: str | Path, color: str = "RGB"):
    """The image at `path` as an 8-bit Pillow image in `color`'s mode (BGR decodes as RGB; the
    channels are swapped by `Preprocess`). Raises InputError for a file that is not a readable
    image or has more than MAX_PIXELS pixels."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise CnnGraphError('reading images needs Pillow (pip install -e ".[images]")') from None
    try:
        with Image.open(path) as image:
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise InputError(f"image of {w}x{h} pixels is over the limit of {MAX_PIXELS:,} pixels",
                                 file=str(path))
            image = ImageOps.exif_transpose(image)
            return image.convert("L" if color == "L" else "RGB")
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err) or type(err).__name__
        raise InputError(f"not a readable image: {reason}", file=str(path)) from None

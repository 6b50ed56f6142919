"""The one reader of image and mask files: pixels as the file means them, or a one-line refusal.

Pillow's ``convert`` alone is not faithful: it clamps 16-bit values to 0..255 (a 16-bit
grayscale PNG becomes all white), drops alpha (transparent pixels show whatever colour is
stored under them), ignores the EXIF orientation and the embedded colour profile, and reads
only the first frame of an animation. Everything that changes how a viewer displays the file
is honoured here, in display order:

- frames: a file with more than one frame (animated GIF/PNG/WebP, multi-page TIFF) is refused;
- EXIF orientation: applied (``ImageOps.exif_transpose``);
- bit depth: 16-bit grayscale (``I;16*``, or ``I`` from a 16-bit PNG) is scaled by 1/65535;
  32-bit integer and floating-point images (``I``, ``F``) have no defined range and are refused;
- colour profile: an embedded ICC profile other than sRGB is converted to sRGB (LittleCMS);
  PNG ``gAMA`` without a profile is converted to the sRGB curve;
- alpha (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, palette or colour-key
  transparency): an image is composited on ``BACKGROUND`` with an ``ImageInputWarning`` when
  any pixel is not opaque; a mask with transparent pixels is read from its alpha channel
  (opaque = inside), since painting a region on a transparent layer is how editors export masks.

Other modes (palette, CMYK, YCbCr, 1-bit) convert faithfully through Pillow; a mode Pillow
cannot convert to RGB (LAB, HSV) is refused. Nothing is ever resized.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps

BACKGROUND = (255, 255, 255)  # what transparent pixels of an image are composited on
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
SRGB_GAMMA = 1 / 2.2  # PNG gAMA of a file already on (approximately) the sRGB curve


class ImageInputWarning(UserWarning):
    """An input image was converted in a way that needed a choice (e.g. a background for transparency)."""


def _open(path: Path, what: str) -> tuple[Image.Image, str | None]:
    """The file's single frame, loaded and turned as its EXIF orientation says, and its format ("PNG", ...)."""
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ValueError(f"{what} {path} has {frames} frames (an animation or multi-page file); "
                                 f"give a single still image")
            img.load()
            return ImageOps.exif_transpose(img), img.format  # the turned copy has no format
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from err


def _check_size(img: Image.Image, path: Path, size: int, what: str) -> None:
    if img.size != (size, size):
        raise ValueError(f"{what} {path} is {img.width}x{img.height} pixels; expected {size}x{size}")


def _to_srgb(img: Image.Image, fmt: str | None, path: Path, what: str) -> Image.Image:
    """Apply an embedded non-sRGB ICC profile, or a PNG gAMA other than sRGB's, so values are sRGB."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if "srgb" in ImageCms.getProfileDescription(source).lower():
                return img
            alpha = img.convert("RGBA").getchannel("A") if img.has_transparency_data else None
            space = source.profile.xcolor_space.strip()  # the pixels the profile describes: RGB, GRAY or CMYK
            base = img.convert({"GRAY": "L", "CMYK": "CMYK"}.get(space, "RGB"))
            converted = ImageCms.profileToProfile(base, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as err:
            raise ValueError(f"cannot apply the colour profile embedded in {what} {path}: {err}") from err
        if alpha is not None:
            converted.putalpha(alpha)
        return converted
    gamma = img.info.get("gamma")
    if gamma and fmt == "PNG" and abs(gamma / SRGB_GAMMA - 1) > 0.01 and img.mode in ("L", "RGB"):
        # gAMA stores v = linear ** gamma; re-encode linear light on the sRGB-like 1/2.2 curve.
        lut = [round(255 * (v / 255) ** (SRGB_GAMMA / gamma)) for v in range(256)]
        return img.point(lut * len(img.getbands()))
    return img


def _channels(img: Image.Image, fmt: str | None, path: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour (H, W, 3) float in [0, 1], alpha (H, W) float in [0, 1] or None when every pixel is opaque)."""
    if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and fmt == "PNG"):
        gray = np.asarray(img, dtype=np.float64) / 65535
        return np.repeat(gray[..., None], 3, axis=2), None
    if img.mode in ("I", "F"):
        kind = "floating-point" if img.mode == "F" else "32-bit integer"
        raise ValueError(f"{what} {path} holds {kind} pixels (mode {img.mode}), whose range is not defined; "
                         f"save it as 8- or 16-bit")
    img = _to_srgb(img, fmt, path, what)
    try:
        if img.has_transparency_data:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255
            alpha = rgba[..., 3]
            return rgba[..., :3], (alpha if (alpha < 1).any() else None)
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255, None
    except ValueError as err:
        raise ValueError(f"cannot convert {what} {path} (mode {img.mode}) to RGB: {err}") from err


def load_image(path: str | Path, size: int, background: tuple[int, int, int] = BACKGROUND) -> torch.Tensor:
    """An image file as a (3, size, size) float32 tensor in [0, 1], as a viewer displays it.

    Transparent pixels are composited on ``background`` (an ``ImageInputWarning`` says so).
    Raises ValueError (one line) on unreadable, multi-frame, wrong-size or undefined-range files.
    """
    path = Path(path)
    img, fmt = _open(path, "image")
    _check_size(img, path, size, "image")
    colour, alpha = _channels(img, fmt, path, "image")
    if alpha is not None:
        a = alpha[..., None]
        colour = colour * a + np.asarray(background, dtype=np.float64) / 255 * (1 - a)
        warnings.warn(f"image {path} has {int((alpha < 1).sum())} transparent or translucent pixels; "
                      f"composited on background RGB{tuple(background)}", ImageInputWarning, stacklevel=2)
    return torch.from_numpy(colour).permute(2, 0, 1).float().contiguous()


def load_mask(path: str | Path, size: int) -> torch.Tensor:
    """A binary mask file as a (size, size) float32 tensor in {0, 1}.

    A mask with transparent pixels is read from its alpha channel (opaque = inside); otherwise
    white = inside and black = outside. Raises ValueError on anything else (grey or translucent
    pixels, colours, unreadable or wrong-size files).
    """
    path = Path(path)
    img, fmt = _open(path, "mask image")
    _check_size(img, path, size, "mask image")
    colour, alpha = _channels(img, fmt, path, "mask image")
    if alpha is not None:
        if not np.isin(alpha, (0.0, 1.0)).all():
            raise ValueError(f"mask {path} is read from its alpha channel (it has transparent pixels), but some "
                             f"pixels are translucent; use only fully transparent (outside) and opaque (inside)")
        return torch.from_numpy(alpha == 1).float()
    if not (np.isin(colour, (0.0, 1.0)).all() and (colour == colour[..., :1]).all()):
        raise ValueError(f"mask {path} is not binary; use only black (0, outside) and white (255, inside), "
                         f"or opaque on transparent")
    return torch.from_numpy(colour[..., 0] == 1).float()

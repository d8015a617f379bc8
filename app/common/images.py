"""Images in and out: CIFAR-10 test images, uploaded or camera photos, and the conversions the pages need.

Inside the app an image is a uint8 array (3, 32, 32) (CIFAR-10's layout), or a float tensor in [0, 1]
for the model. Uploaded photos of any size are centre-cropped to a square and resized to 32x32.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cas import data as cas_data

from .sharing import SharedCalls, SharedResults

MAX_PIXELS = 40_000_000  # ~ a 7,700 x 5,200 photo; larger uploads are refused before decoding
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
PREVIEW_SIZE = 192
# the most test images one request may attack, so that no click pins the server: a CPU needs minutes
# for 1,000 images (PGD on the bundled models), and AutoAttack-type attacks take seconds per image there
MAX_REQUEST_IMAGES = 10_000 if torch.cuda.is_available() else 1_000
MAX_SLOW_ATTACK_IMAGES = 10_000 if torch.cuda.is_available() else 100


class ImageInputError(ValueError):
    """An uploaded image could not be used; the message says why."""


# -- CIFAR-10 ------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner="Loading the CIFAR-10 test images…", max_entries=2)
def _cifar_test_from(source: str):
    x, y = cas_data.load("test", source)
    return x.numpy(), y.numpy()


def cifar_test() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of the CIFAR-10 test split, loaded once per
    process. Raises ``cas.data.DataNotFoundError`` (with instructions) when no copy is found."""
    source = cas_data.find_source()
    return _cifar_test_from(str(source))


def download_cifar() -> None:
    """Fetch CIFAR-10 through torchvision into the repository's ``data/`` folder (needs internet)."""
    cas_data.load("test", None, download=True)
    _cifar_test_from.clear()


# -- uploads ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedImage:
    """An uploaded photo made ready for the model: ``x`` uint8 (3, 32, 32), ``crop`` the square part
    that was used (an RGB preview at most PREVIEW_SIZE pixels wide), the photo's original size and a
    ``note`` on what was done to it beyond cropping (empty if nothing)."""

    x: np.ndarray
    crop: Image.Image
    original_size: tuple[int, int]
    note: str = ""


# Formats read from uploads; others (EPS, which runs Ghostscript, PSD, ICNS, ...) are refused unread.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits per pixel, one channel
_ALPHA_MODES = ("P", "PA", "LA", "La", "RGBA", "RGBa")


def _deep_to_rgb(im: Image.Image, name: str) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit RGB, its brightness kept: 16-bit
    values are divided by 65535, floats already in [0, 1] are kept, and other ranges are stretched
    from their own minimum and maximum to [0, 1] (never clipped)."""
    a = np.asarray(im, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ImageInputError(f"{name} holds pixel values that are not finite numbers (NaN or infinity).")
    lo, hi = float(a.min()), float(a.max())
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
        a = a / 65535
    elif not (im.mode == "F" and lo >= 0 and hi <= 1):
        a = (a - lo) / (hi - lo) if hi > lo else np.full_like(a, 0.5)
    gray = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Any decoded image as RGB: transparent parts on white, deep images scaled (see :func:`_deep_to_rgb`)."""
    if im.mode in _DEEP_MODES:
        return _deep_to_rgb(im, name)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageInputError(f"{name} uses the colour mode {im.mode}, which cannot be shown as RGB. "
                              "Save it as an RGB PNG or JPEG first.") from None


def _decode(data: bytes, name: str) -> tuple[Image.Image, str]:
    """The upload's first frame as an RGB image, upright, and a note on what was done to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ImageInputError(f"{name} is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); "
                                  f"images up to {MAX_PIXELS / 1e6:.0f} megapixels are accepted. "
                                  "Please resize it first.")
        frames = getattr(im, "n_frames", 1)
        im.load()  # decode now: a truncated file fails here
        note = f"It has {frames} frames; the first one is used." if frames > 1 else ""
        if im.mode in _DEEP_MODES:
            depth = "floating-point" if im.mode == "F" else "32-bit" if im.mode == "I" else "16-bit"
            note = (note + f" Its {depth} grey levels were scaled to 8 bits.").strip()
        try:
            im = ImageOps.exif_transpose(im)  # photos from phones are often stored rotated
        except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels are still good
            note = (note + " Its EXIF orientation could not be read and was ignored.").strip()
        return _to_rgb(im, name), note


def prepare_upload(data: bytes, name: str = "image") -> PreparedImage:
    """Decode an uploaded image, centre-crop it to a square and resize it to 32x32.

    Accepts PNG, JPEG, WebP, GIF (first frame), BMP and TIFF in any colour mode, including palette,
    grayscale, CMYK, 16-bit, 32-bit and float images; EXIF rotation is applied and transparent parts
    become white. Raises :class:`ImageInputError` with a readable message for empty, broken,
    non-image or huge files (more than MAX_PIXELS pixels, checked before the pixels are decoded)."""
    if not data:
        raise ImageInputError(f"{name} is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageInputError(f"{name} is {len(data) / 1e6:.0f} MB; images up to "
                              f"{MAX_UPLOAD_BYTES // 1024 ** 2} MB are accepted.")
    try:
        im, note = _decode(data, name)
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"{name} is too large to open safely (a 'decompression bomb'). "
                              "Please use a smaller image.") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{name} is not an image I can read. Use a PNG, JPEG, WebP, GIF, BMP or TIFF "
                              "file.") from None
    except MemoryError:
        raise ImageInputError(f"{name} needs too much memory to decode. Please use a smaller image.") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types for damaged files
        raise ImageInputError(f"{name} could not be decoded ({e}); the file may be truncated or "
                              "corrupted.") from None
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = im.crop((left, top, left + side, top + side))
    small = square.resize((32, 32), Image.LANCZOS)
    preview = square if side <= PREVIEW_SIZE else square.resize((PREVIEW_SIZE, PREVIEW_SIZE), Image.LANCZOS)
    x = np.asarray(small, dtype=np.uint8).transpose(2, 0, 1).copy()
    return PreparedImage(x, preview, (w, h), note)


# -- conversions -----------------------------------------------------------------------------------

def digest(x: np.ndarray) -> str:
    """A short content hash of an image array (keys cached results)."""
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]


def to_hwc_uint8(x: np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] or uint8 -> (H, W, 3) uint8 for display or PNG."""
    if x.dtype != np.uint8:
        x = np.clip(np.round(np.asarray(x, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def upscale(x: np.ndarray, size: int = 192) -> np.ndarray:
    """Enlarge an image by pixel repetition (nearest neighbour), so 32x32 pixels stay crisp on a
    projector. Accepts (3, H, W) or (H, W, 3); returns (size, size, 3) uint8."""
    img = to_hwc_uint8(x) if x.shape[0] == 3 else x
    factor = max(1, size // img.shape[0])
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


_ENLARGED = SharedResults(32 * 2**20)  # PNG files of enlarged images, shared by every session


def enlarged_png(x: np.ndarray, size: int = 192) -> bytes:
    """:func:`upscale` as a PNG file (exact pixels), made once per image and size for the whole server:
    every visitor of a lecture step or of one attack sees the same images."""
    x = np.ascontiguousarray(x)
    key = (x.dtype.str, x.shape, hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest(), int(size))

    def encode() -> bytes:
        buf = io.BytesIO()
        # level 1: a few times faster to make than the default 6, for files about a tenth larger
        Image.fromarray(upscale(x, size)).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    return _ENLARGED.get(key, encode)


def perturbation_image(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """Make a tiny perturbation (3, H, W) visible: mid-grey is zero, scaled so the largest change is
    full brightness. Returns the (3, H, W) float image in [0, 1] and the amplification factor."""
    m = float(np.abs(delta).max())
    if m <= 0:
        return np.full_like(delta, 0.5, dtype=np.float32), 1.0
    return (0.5 + 0.5 * delta / m).astype(np.float32), 0.5 / m


def png_bytes(x: np.ndarray) -> bytes:
    """PNG file of an image (3, H, W), float in [0, 1] or uint8 (floats are rounded to 8 bits)."""
    buf = io.BytesIO()
    Image.fromarray(to_hwc_uint8(x)).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(x: np.ndarray) -> bytes:
    """``.npy`` file holding the exact array (no rounding), for ``np.load``."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(x), allow_pickle=False)
    return buf.getvalue()


def _download_files(result, model_label: str) -> tuple[bytes, bytes, str]:
    from .image_attack import channel_table  # image_attack imports this module

    return png_bytes(result.x_adv), npy_bytes(result.x_adv), channel_table(result, model_label).to_csv(index=False)


# an attack result's downloads, made once per result for the whole server: (PNG, exact .npy, channel CSV)
download_files = SharedCalls(64 * 2**20).share(_download_files)


def cifar_test_or_stop() -> tuple[np.ndarray, np.ndarray]:
    """:func:`cifar_test`, or a warning saying how to get CIFAR-10 and the end of this page run."""
    try:
        return cifar_test()
    except cas_data.DataNotFoundError as e:
        st.warning(str(e))
        st.stop()


def shuffled_subset(n: int, cls: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (of class ``cls``, or all) in the fixed shuffle that the evaluator
    and every page use: (uint8 (n, 3, 32, 32), labels)."""
    x, y = cifar_test_or_stop()
    idx = cas_data.shuffled_indices(len(y)).numpy()
    if cls != "all":
        idx = idx[y[idx] == cas_data.CLASSES.index(cls)]
    idx = idx[:n]
    return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])

"""Odd and hostile inputs: uploaded images and checkpoint files, each made here with PIL, numpy and
torch (no binary fixtures). Every one is used correctly or refused with a clear message."""
from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import cas
from app.common import images
from app.common.images import ImageInputError, prepare_upload
from cas import CheckpointError, load_checkpoint, save_checkpoint
from cas.checkpoint import CARD_KEY

ROOT = Path(__file__).resolve().parent.parent


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_raw(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written chunk by chunk (for what PIL does not write: 16-bit RGB, lying sizes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def mean_rgb(data: bytes) -> np.ndarray:
    return prepare_upload(data, "x").x.reshape(3, -1).mean(1)


# -- images: used correctly ----------------------------------------------------------------------------

def test_16_bit_grayscale_keeps_its_brightness():
    a = np.full((40, 40), 16384, np.uint16)  # a quarter of the 16-bit range: dark grey, not white
    p = prepare_upload(encode(Image.fromarray(a)), "deep.png")
    assert np.all(np.abs(p.x.astype(int) - 64) <= 1) and "scaled" in p.note


def test_16_bit_grayscale_tiff_gradient_is_not_clipped():
    a = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    x = prepare_upload(encode(Image.fromarray(a), "TIFF"), "deep.tif").x
    row = x[0, 16].astype(int)
    assert row[0] <= 10 and row[-1] >= 245 and np.all(np.diff(row) >= 0)


def test_16_bit_rgb_png():
    px = np.array([65535, 0, 32768], ">u2").tobytes()  # red full, green none, blue half
    rows = b"".join(b"\x00" + px * 8 for _ in range(8))
    assert np.allclose(mean_rgb(png_raw(8, 8, 16, 2, rows)), [255, 0, 128], atol=2)


@pytest.mark.parametrize("lo,hi,expected", [(0.0, 1.0, 127.5), (0.25, 0.25, 64), (-3.0, 500.0, 127.5)])
def test_float_images_are_scaled_by_their_range(lo, hi, expected):
    a = np.tile(np.linspace(lo, hi, 64, dtype=np.float32), (64, 1))
    x = prepare_upload(encode(Image.fromarray(a, mode="F"), "TIFF"), "float.tif").x
    assert abs(x.mean() - expected) < 3, x.mean()


def test_float_image_with_nan_is_refused():
    a = np.full((16, 16), 0.5, np.float32)
    a[3, 3] = np.nan
    with pytest.raises(ImageInputError, match="not finite"):
        prepare_upload(encode(Image.fromarray(a, mode="F"), "TIFF"), "nan.tif")


def test_32_bit_integer_image():
    a = np.full((16, 16), 1000, np.int32)
    a[:, 8:] = 3000
    x = prepare_upload(encode(Image.fromarray(a, mode="I"), "TIFF"), "int.tif").x
    assert x.min() < x.max()  # both halves visible, neither clipped to white


def test_palette_with_transparency_is_composited_on_white():
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 20, 10))  # top half red, bottom half transparent black
    x = prepare_upload(encode(im, transparency=0), "p.png").x
    assert tuple(x[:, 2, 16]) == (255, 0, 0) and tuple(x[:, 29, 16]) == (255, 255, 255)


def test_grayscale_and_grayscale_with_alpha():
    assert np.allclose(mean_rgb(encode(Image.new("L", (10, 10), 100))), 100)
    la = Image.new("LA", (10, 10), (0, 0))  # fully transparent black: white
    assert np.allclose(mean_rgb(encode(la)), 255)


def test_cmyk_jpeg_keeps_its_colours():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    r, g, b = mean_rgb(encode(red, "JPEG", quality=95))
    assert r > 200 and g < 60 and b < 60


def test_exif_rotation_is_applied():
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: left half red, right half blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: show it turned 90 degrees clockwise
    p = prepare_upload(encode(Image.fromarray(a), "JPEG", exif=exif, quality=95), "phone.jpg")
    assert p.original_size == (20, 40)  # upright: 20 wide, 40 high; the red half is now on top
    assert p.x[0, 0].mean() > 200 and p.x[2, 31].mean() > 200


def test_a_damaged_exif_block_is_ignored(monkeypatch):
    def broken(im):
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken)
    p = prepare_upload(encode(Image.new("RGB", (8, 8), (1, 2, 3)), "JPEG", quality=95), "odd.jpg")
    assert "EXIF" in p.note and p.x.shape == (3, 32, 32)


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    p = prepare_upload(data, "anim.gif")
    assert "3 frames" in p.note
    r, g, b = p.x.reshape(3, -1).mean(1)
    assert r > 200 and g < 50 and b < 50


def test_one_pixel_image():
    p = prepare_upload(encode(Image.new("RGB", (1, 1), (10, 200, 30))), "dot.png")
    assert p.x.shape == (3, 32, 32) and tuple(p.x[:, 5, 5]) == (10, 200, 30)


# -- images: refused ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"GIF89a" + b"\x00" * 3, "not an image I can read|could not be decoded"),
    (b"%PDF-1.4 not a picture", "not an image I can read"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image I can read"),  # never run through Ghostscript
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image I can read"),
])
def test_broken_and_foreign_files_are_refused(data, message):
    with pytest.raises(ImageInputError, match=message):
        prepare_upload(data, "f")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_files_are_refused(fmt):
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageInputError, match="truncated|not an image"):
        prepare_upload(data[: len(data) * 2 // 3], "cut")


def test_a_lying_huge_header_is_refused_before_decoding():
    bomb = png_raw(100_000, 100_000, 8, 2, b"\x00" * 301)  # ten gigapixels claimed, a few bytes sent
    with pytest.raises(ImageInputError, match="decompression bomb"):
        prepare_upload(bomb, "bomb.png")
    wide = png_raw(9000, 5000, 1, 0, b"\x00" * 301)  # 45 megapixels: above this app's own limit
    with pytest.raises(ImageInputError, match="megapixels"):
        prepare_upload(wide, "wide.png")


def test_decompression_bomb_within_the_size_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageInputError, match="decompression bomb"):
        prepare_upload(encode(Image.new("L", (100, 100))), "bomb.png")


def test_too_many_bytes(monkeypatch):
    monkeypatch.setattr(images, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(ImageInputError, match="MB"):
        prepare_upload(b"\x00" * 2000, "big.png")


# -- the pages show the error and go on -----------------------------------------------------------------

def _upload_page(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    at.radio(key="lab_src").set_value("upload").run()
    return at


def test_upload_and_camera_show_errors_and_the_page_goes_on(tmp_path, monkeypatch, cifar_test):
    at = _upload_page(tmp_path, monkeypatch)
    bad = [("cut.png", encode(Image.new("RGB", (64, 64), 7))[:50]), ("x.png", b"MZ\x90\x00"),
           ("bomb.png", png_raw(100_000, 100_000, 8, 2, b"\x00" * 301))]
    for name, data in bad:
        at.file_uploader(key="up_lab_image").set_value((name, data, "image/png")).run()
        assert not at.exception, [e.value for e in at.exception]
        assert name in "\n".join(e.value for e in at.error)
    deep = encode(Image.fromarray(np.full((40, 40), 16384, np.uint16)))
    at.file_uploader(key="up_lab_image").set_value(("deep.png", deep, "image/png")).run()
    assert not at.exception and not at.error
    at.radio(key="lab_src").set_value("camera").run()
    at.camera_input(key="up_lab_camera").set_value(("shot.jpg", b"\xff\xd8\xff\xe0broken", "image/jpeg")).run()
    assert not at.exception
    assert "shot.jpg" in "\n".join(e.value for e in at.error)


# -- checkpoints -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = cas.create_model("resnet18", width=4)
    return model, cas.make_card(model, method="at")


def write(path: Path, tensors: dict, card: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={CARD_KEY: json.dumps(card)})
    return path


def _edited(tiny, edit) -> tuple[dict, dict]:
    model, card = tiny
    state, card = dict(model.state_dict()), json.loads(json.dumps(card))
    edit(state, card)
    return state, card


def _nan(state, card):
    state["classifier.2.weight"] = state["classifier.2.weight"].clone()
    state["classifier.2.weight"][0, 0] = float("nan")


def _says_vgg(state, card):
    card["arch"] = "vgg16"
    card["arch_kwargs"].pop("cas_points")


def _inf(state, card):
    key = next(k for k in state if k.endswith("running_var"))
    state[key] = torch.full_like(state[key], float("inf"))


@pytest.mark.parametrize("edit,message", [
    (lambda s, c: s.pop("classifier.2.weight"), "missing 1 tensors"),
    (lambda s, c: s.update(extra=torch.zeros(3)), "1 unexpected tensors"),
    (lambda s, c: s.update({"classifier.2.bias": torch.zeros(11)}), "shape mismatches"),
    (lambda s, c: s.update({"classifier.2.weight": s["classifier.2.weight"].to(torch.int8)}), "wrong dtype"),
    (lambda s, c: s.update({"classifier.2.weight": s["classifier.2.weight"].double()}), "wrong dtype"),
    (_nan, "NaN or infinite"),
    (_inf, "NaN or infinite"),
    (_says_vgg, "missing .* unexpected"),  # a card lying about its architecture
    (lambda s, c: c["arch_kwargs"].update(cas=False), "unexpected tensors"),
    (lambda s, c: c["arch_kwargs"].update(width=10**7), "width = 10000000; allowed"),
    (lambda s, c: c["arch_kwargs"].update(width="4"), "allowed: whole numbers"),
    (lambda s, c: c["arch_kwargs"].update(num_classes=10**9), "num_classes"),
    (lambda s, c: c.update(arch_kwargs=[1, 2]), "not a mapping"),
    (lambda s, c: c.update(arch=["resnet18"]), "unknown architecture"),
    (lambda s, c: c["arch_kwargs"].update(bogus=1), "arguments are invalid"),
])
def test_mismatched_checkpoints_are_refused(tiny, tmp_path, edit, message):
    state, card = _edited(tiny, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(write(tmp_path / "m.safetensors", state, card))


def test_a_good_file_still_loads(tiny, tmp_path):
    model, card = tiny
    loaded, _ = load_checkpoint(write(tmp_path / "m.safetensors", model.state_dict(), card))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_truncated_and_lying_headers(tiny, tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", tiny[0], tiny[1])
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: 8 + n + 100])  # the header whole, the weights cut short
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    huge = tmp_path / "huge.safetensors"  # a header of 20 MB: refused before it is parsed
    huge.write_bytes((20 * 1024**2).to_bytes(8, "little") + b"{" + b" " * (20 * 1024**2))
    with pytest.raises(CheckpointError, match="header is 20 MB"):
        cas.read_card(huge)
    endless = tmp_path / "endless.safetensors"
    endless.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(endless)
    nested = tmp_path / "nested.safetensors"
    body = b"[" * 100_000 + b"]" * 100_000
    nested.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(nested)


class _Trap:
    """Unpickling this object would create a file: the proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["pickle", "torch-zip", "torch-legacy"])
def test_a_pickle_renamed_safetensors_is_refused_unread(tmp_path, how):
    marker = tmp_path / "unpickled"
    f = tmp_path / "model.safetensors"
    payload = {"classifier.2.weight": torch.zeros(2), "trap": _Trap(marker)}
    if how == "pickle":
        f.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, f, _use_new_zipfile_serialization=how == "torch-zip")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(f)
    with pytest.raises(CheckpointError):
        cas.read_card(f)
    assert not marker.exists()


def test_checkpoint_upload_in_the_app_shows_the_problem(tiny, tmp_path, monkeypatch, cifar_test):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "no-models"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    state, card = _edited(tiny, _nan)
    bad = write(tmp_path / "b.safetensors", state, card).read_bytes()
    at.file_uploader(key="up_lab_ckpt").set_value(("diverged.safetensors", bad, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = "\n".join(e.value for e in at.error)
    assert "diverged.safetensors" in errors and "NaN" in errors

"""The Attack Lab and Compare pages, driven through Streamlit's AppTest (no browser).

The models are the small CPU-trained stand-ins of the ``standin_pretrained`` fixture. Attacks run with
few steps so that each test takes a few seconds.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent

MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 120


def make_app(**query) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    return at


def assert_clean(at: AppTest) -> None:
    """No exception reached the page."""
    assert not at.exception, [e.value for e in at.exception]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def last_result(at: AppTest):
    """The LabResult the page computed most recently."""
    store = at.session_state["_lab_results"]
    return list(store.values())[-1]


def plotly_count(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def png(size=(300, 200), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# -- Attack Lab ------------------------------------------------------------------------------------

def test_default_view_attacks_and_draws(models_dir):
    at = make_app(steps=3).run()
    assert_clean(at)
    headers = [s.value for s in at.subheader]
    assert any(h.startswith("Result: PGD") for h in headers), headers
    assert "What the model predicts" in headers
    r = last_result(at)
    assert r.attacked and r.linf255 <= 8 + 1e-3
    assert plotly_count(at) >= 2  # probabilities + channels
    assert "L∞ =" in texts(at.markdown)
    assert len(at.get("download_button")) == 3
    assert "present=" not in texts(at.code)
    shown = make_app(steps=3, present=1).run()
    assert_clean(shown)
    assert "present=1" in texts(shown.code)  # the share link keeps presentation mode
    # the chart's caption says that one image may go against the paper's dataset-level claims
    assert "one image is one sample" in texts(at.caption) and "Channel statistics" in texts(at.caption)


@pytest.mark.parametrize("attack,extra", [
    ("none", {}),
    ("fgsm", {"eps": 4}),
    ("pgd", {"steps": 3, "target": "cat"}),
    ("cw", {"steps": 3}),
    ("pgd_l2", {"steps": 3, "l2eps": 0.3}),
    ("square", {"queries": 20}),
    ("joint_pgd", {"steps": 3}),
    ("soft_mask_pgd", {"steps": 3}),
])
def test_each_attack_on_cas_model(models_dir, attack, extra):
    at = make_app(model="at-cas", attack=attack, **extra).run()
    assert_clean(at)
    assert not at.error or all("attack succeeded" in e.value for e in at.error), texts(at.error)
    r = last_result(at)
    assert r.choice.attack == attack
    if attack == "pgd_l2":
        assert r.l2 <= 0.3 + 1e-4
    elif attack == "none":
        assert r.linf255 == 0
    else:
        assert r.linf255 <= extra.get("eps", 8) + 1e-3
    # final head + two auxiliary heads are drawn; one channel chart, of the module shown (the last)
    assert len(r.modules) == 2 and all(m.aux_probs is not None for m in r.modules)
    assert plotly_count(at) == 2 and at.radio(key="lab_module").value == r.modules[-1].name
    assert "Result" in texts(at.subheader)


def test_attack_menu_follows_the_model(models_dir):
    at = make_app(model="at-cas").run()
    menu = at.selectbox(key="lab_attack")
    assert "soft_mask_pgd" in menu.options or "Soft-mask PGD (mask-adaptive)" in menu.options
    assert "gradient masking" in texts(at.caption)
    menu.set_value("soft_mask_pgd").run()
    at.number_input(key="lab_steps").set_value(2).run()
    assert_clean(at)
    assert last_result(at).choice.attack == "soft_mask_pgd"
    # a model without CAS cannot run a mask-adaptive attack: the page says so and falls back to PGD
    at.selectbox(key="lab_model").set_value("std").run()
    assert_clean(at)
    assert "needs a model with CAS" in texts(at.info)
    assert at.selectbox(key="lab_attack").value == "pgd"
    assert last_result(at).choice.attack == "pgd"
    assert len(last_result(at).modules) == 1 and last_result(at).modules[0].aux_probs is None
    assert "gradient masking" not in texts(at.caption)


def test_failed_plain_attack_on_cas_points_to_the_honest_test(models_dir, cifar_test):
    import torch

    import cas

    model = cas.load_model(Path(models_dir) / "at-cas.safetensors")
    x, y = cifar_test
    with torch.no_grad():
        pred = model(x[:200].float() / 255).argmax(1)
    correct = int((pred == y[:200]).nonzero()[0, 0])  # an image the model gets right
    at = make_app(model="at-cas", img=correct, eps=0, steps=2).run()  # eps 0: the attack cannot succeed
    assert_clean(at)
    assert "not proof of robustness" in texts(at.warning)
    at.button(key="btn_lab_try_soft").click().run()
    assert_clean(at)
    assert at.session_state["lab_attack"] == "soft_mask_pgd"
    assert last_result(at).choice.attack == "soft_mask_pgd"


def test_chart_options_do_not_rerun_the_attack(models_dir):
    at = make_app(model="at-cas", steps=3).run()
    assert at.session_state["_lab_computations"] == 1
    at.radio(key="lab_sort").set_value("index").run()
    at.slider(key="lab_thr").set_value(12.0).run()
    assert_clean(at)
    assert at.session_state["_lab_computations"] == 1
    assert at.query_params.get("sort") == ["index"] or at.query_params.get("sort") == "index"
    # a new setting does run it
    at.number_input(key="lab_seed").set_value(5).run()
    assert at.session_state["_lab_computations"] == 2


def test_state_from_query_params_on_first_load(models_dir):
    at = make_app(model="at", img=7, attack="fgsm", eps=4, seed=3, sort="mask", cls="cat").run()
    assert_clean(at)
    ss = at.session_state
    keys = ["lab_model", "lab_idx", "lab_attack", "lab_eps", "lab_seed", "lab_sort"]
    assert [ss[k] for k in keys] == ["at", 7, "fgsm", 4.0, 3, "mask"]
    title = next(s.value for s in at.subheader if s.value.startswith("Result"))
    assert "FGSM, ε = 4/255" in title and "#7" in title
    # the URL keeps describing the view
    q = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert q["model"] == "at" and q["img"] == "7" and q["attack"] == "fgsm" and q["eps"] == "4"


def test_bad_query_params_are_reported_not_fatal(models_dir):
    at = make_app(eps=999, steps="many", model="no-such-model", attack="fgsm").run()
    assert_clean(at)
    warnings = texts(at.warning)
    assert "eps=999" in warnings and "steps=many" in warnings
    assert "no-such-model" in warnings
    assert at.session_state["lab_eps"] == 8.0
    assert last_result(at).choice.attack == "fgsm"


def test_link_to_an_uploaded_photo_explains_itself(models_dir):
    at = make_app(src="upload").run()
    assert_clean(at)
    assert "a link cannot carry" in texts(at.info)
    assert at.radio(key="lab_src").value == "upload"


def test_uploaded_image_is_cropped_and_attacked(models_dir):
    at = make_app(steps=2).run()
    at.radio(key="lab_src").set_value("upload").run()
    at.file_uploader(key="up_lab_image").set_value(("photo.png", png((300, 200)), "image/png")).run()
    assert_clean(at)
    r = last_result(at)
    assert r.x_nat.shape == (3, 32, 32) and not r.label_known
    assert "Real class unknown" in texts(at.error) + texts(at.success) + texts(at.warning) + texts(at.info)
    # telling the page what the photo shows makes it the attack's label
    at.selectbox(key="lab_label").set_value(3).run()
    assert last_result(at).label == 3 and last_result(at).label_known


@pytest.mark.parametrize("content,message", [
    (b"this is not an image", "not an image I can read"),
    (png((40, 40))[:60], "could not be decoded"),
    (b"", "empty"),
])
def test_broken_uploads_get_a_clear_message(models_dir, content, message):
    at = make_app().run()
    at.radio(key="lab_src").set_value("upload").run()
    at.file_uploader(key="up_lab_image").set_value(("broken.png", content, "image/png")).run()
    assert_clean(at)
    assert message in texts(at.error)


def test_huge_upload_is_refused_before_decoding(models_dir):
    big = io.BytesIO()
    Image.new("1", (9000, 5000)).save(big, format="PNG")  # 45 megapixels, a few kB on disk
    at = make_app().run()
    at.radio(key="lab_src").set_value("upload").run()
    at.file_uploader(key="up_lab_image").set_value(("big.png", big.getvalue(), "image/png")).run()
    assert_clean(at)
    assert "megapixels" in texts(at.error)


def test_decompression_bomb_is_caught(monkeypatch):
    from app.common import images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(images.ImageInputError, match="too large to open safely"):
        images.prepare_upload(png((100, 100)), "bomb.png")


def test_camera_photo(models_dir):
    buf = io.BytesIO()
    Image.fromarray(np.full((480, 640, 3), 120, np.uint8)).save(buf, format="JPEG")
    at = make_app(steps=2).run()
    at.radio(key="lab_src").set_value("camera").run()
    at.camera_input(key="up_lab_camera").set_value(("shot.jpg", buf.getvalue(), "image/jpeg")).run()
    assert_clean(at)
    assert "camera photo" in texts(at.subheader)


def test_no_models_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = make_app().run()
    assert_clean(at)
    info = texts(at.info)
    assert "No bundled models are installed" in info and "Train" in info and ".safetensors" in info


@pytest.mark.parametrize("content,message", [
    (b"\x80\x04\x95" + b"\x00" * 64, "looks like a PyTorch pickle"),
    (b"PK\x03\x04" + b"\x00" * 64, "looks like a PyTorch pickle"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx", "not a valid safetensors"),
])
def test_bad_checkpoint_upload_gets_a_clear_error(monkeypatch, tmp_path, content, message):
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "no-runs"))
    at = make_app().run()
    at.file_uploader(key="up_lab_ckpt").set_value(("model.safetensors", content, "application/octet-stream"))
    at.run()
    assert_clean(at)
    errors = texts(at.error)
    assert message in errors and "model.safetensors" in errors


def test_truncated_checkpoint_and_good_upload(models_dir, monkeypatch, tmp_path):
    data = (Path(models_dir) / "at-cas.safetensors").read_bytes()
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "empty"))
    at = make_app(steps=2).run()
    up = at.file_uploader(key="up_lab_ckpt")
    up.set_value(("half.safetensors", data[: len(data) // 2], "application/octet-stream")).run()
    assert_clean(at)
    assert "half.safetensors" in texts(at.error)
    at.file_uploader(key="up_lab_ckpt").set_value(("mine.safetensors", data, "application/octet-stream"))
    at.run()
    assert_clean(at)
    assert not at.error or all("attack succeeded" in e.value for e in at.error)
    assert "with CAS" in texts(at.caption) and len(last_result(at).modules) == 2


def test_authors_pth_upload_is_converted_with_the_architecture_asked(models_dir, monkeypatch, tmp_path):
    """A state dict saved by the CAS authors' code (their ResNet-18 layout, built by tests/test_convert.py)
    is converted on upload: the wrong architecture gets the converter's message, the right one attacks."""
    import io

    import torch
    from test_convert import TheirResNet18

    buf = io.BytesIO()
    torch.save(TheirResNet18(True).state_dict(), buf)
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path / "empty"))
    at = make_app(steps=2).run()
    at.file_uploader(key="up_lab_ckpt").set_value(("theirs.pth", buf.getvalue(), "application/octet-stream"))
    at.run()
    at.selectbox(key="lab_ckpt_arch").set_value("vgg16").run()
    assert "theirs.pth" in texts(at.error) and "Is the architecture (--arch) right?" in texts(at.error)
    at.selectbox(key="lab_ckpt_arch").set_value("resnet18").run()
    assert_clean(at)
    assert not at.error or all("attack succeeded" in e.value for e in at.error)
    assert "with CAS" in texts(at.caption) and len(last_result(at).modules) == 2
    assert last_result(at).attacked


def test_checkpoint_path_input(models_dir, tmp_path):
    at = make_app(steps=2).run()
    at.selectbox(key="lab_model").set_value("__path__").run()
    at.text_input(key="lab_ckpt").set_value(str(tmp_path / "missing.safetensors")).run()
    assert "checkpoint not found" in texts(at.error)
    at.text_input(key="lab_ckpt").set_value(str(Path(models_dir) / "at.safetensors")).run()
    assert_clean(at)
    assert last_result(at).attacked


def test_square_refuses_a_target(models_dir):
    at = make_app(attack="square", target="cat", queries=20).run()
    assert_clean(at)
    assert "untargeted" in texts(at.error)


def test_gallery_random_and_class_filter(models_dir):
    at = make_app(attack="none").run()
    at.selectbox(key="lab_cls").set_value("frog").run()
    at.button(key="btn_lab_random").click().run()
    assert_clean(at)
    assert last_result(at).label == 6  # frog
    # the gallery is drawn only when opened; it shows frogs only; "Use" picks one
    assert not [b for b in at.button if b.key.startswith("btn_lab_use_")]
    at.session_state["lab_gallery_open"] = True
    at.run()
    used = [b for b in at.button if b.key.startswith("btn_lab_use_")]
    assert used
    pick = used[-1]
    pick.click().run()
    assert_clean(at)
    assert at.session_state["lab_idx"] == int(pick.key.rsplit("_", 1)[1])
    assert last_result(at).label == 6


def test_missing_cifar_offers_download_and_uploads(models_dir, monkeypatch):
    from cas import data as cas_data

    monkeypatch.delenv("CAS_DATA", raising=False)
    monkeypatch.setattr(cas_data, "default_candidates", lambda: [])
    at = make_app().run()
    assert_clean(at)
    assert "No CIFAR-10 copy was found" in texts(at.warning)
    assert any(b.key == "btn_download_cifar" for b in at.button)
    assert list(at.radio(key="lab_src").options) == ["Upload a photo", "Camera"]


def test_exports_are_exact():
    from app.common import image_attack, images

    x = np.random.default_rng(1).random((3, 32, 32), dtype=np.float32)
    assert np.array_equal(np.load(io.BytesIO(images.npy_bytes(x))), x)
    im = np.asarray(Image.open(io.BytesIO(images.png_bytes(x))))
    assert im.shape == (32, 32, 3) and np.abs(im / 255 - x.transpose(1, 2, 0)).max() <= 0.5 / 255 + 1e-6
    view = image_attack.PointView("layer4_1", np.ones((2, 4)), np.ones((2, 4)), np.ones((2, 4)), None, False)
    r = image_attack.LabResult(x, x, 0, True, image_attack.AttackChoice("none"), np.eye(2, 10), [view], 0.0)
    table = image_attack.channel_table(r)
    assert list(table.columns)[:3] == ["module", "channel", "natural_before_mask"] and len(table) == 4


# -- Compare ---------------------------------------------------------------------------------------

def compare_app(**query) -> AppTest:
    at = make_app(attack="none").run()
    at.switch_page("views/compare.py")
    for k, v in query.items():
        at.query_params[k] = str(v)
    return at.run()


def test_compare_white_box(models_dir):
    at = compare_app(steps=2, models="std,at-cas", attack="soft_mask_pgd")
    assert_clean(at)
    assert at.session_state["cmp_models"] == ["std", "at-cas"]
    # per model: probabilities + channels
    assert plotly_count(at) == 4
    assert "plain PGD" in texts(at.caption)  # the model without CAS gets plain PGD
    assert "each model attacked on its own" in texts(at.subheader)


def test_compare_transfer(models_dir):
    at = compare_app(steps=2, mode="transfer", source="at", attack="pgd")
    assert_clean(at)
    assert at.session_state["cmp_models"] == ["std", "at", "at-cas"]
    store = [r for r in at.session_state["_lab_results"].values() if r.attacked]
    assert len(store) == 3
    crafted = store[0]
    # every model saw the same adversarial image
    assert all(np.array_equal(r.x_adv, crafted.x_adv) for r in store)
    assert "crafted on at, applied to all" in texts(at.subheader)
    assert plotly_count(at) == 6


def test_compare_follows_the_attack_lab(models_dir):
    at = make_app(img=12, attack="fgsm").run()
    at.switch_page("views/compare.py").run()
    assert_clean(at)
    assert at.session_state["cmp_idx"] == 12 and at.session_state["cmp_attack"] == "fgsm"


def test_compare_needs_two_models(monkeypatch, tmp_path, models_dir):
    import json

    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "std.safetensors").write_bytes((Path(models_dir) / "std.safetensors").read_bytes())
    (folder / "index.json").write_text(json.dumps({"models": [{"name": "std", "file": "std.safetensors"}]}))
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(folder))
    at = compare_app()
    assert_clean(at)
    assert "needs at least two" in texts(at.info)


def test_all_pages_are_registered(models_dir):
    at = make_app(attack="none").run()
    for page in ["compare.py", "channel_stats.py", "robustness.py", "train.py"]:
        at.switch_page(f"views/{page}").run()
        assert_clean(at)

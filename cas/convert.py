"""Bring a model trained with the code of the CAS authors, or of CIFS, EWAS or FSR, into CAS Lab:

    python -m cas.convert FILE.pth --arch resnet18|vgg16|wrn34_10 [--no-cas] --out MODEL.safetensors
    python -m cas.convert FILE.pth --arch resnet18 --defense cifs|ewas|fsr --out MODEL.safetensors

The input is a state dict saved by that code (``torch.save(model.state_dict())``, ``.pt``, ``.pth`` or
``.pth.tar``, bare or as the ``state_dict`` entry of a training checkpoint, with or without
DataParallel's ``module.`` prefix). It is read with ``torch.load(weights_only=True)`` only: a file
holding anything but tensors and plain values is refused, never unpickled. The CAS authors' layouts
(``--defense cas``, the default):

* ``resnet18``: ``conv1``/``bn1`` stem, ``layer1``-``layer4`` blocks, CAS heads ``layer4.{0,1}.fc``
  after each block of the last stage, classifier ``linear``;
* ``vgg16``: ``layer1``-``layer4`` (convolution with bias, BN, ReLU, max-pool), ``layer5`` with a CAS
  head ``fc`` on each of its three convolutions, then ``layer6``/``layer7`` (linear, BN) and ``layer8``;
* ``wrn34_10``: WRN-34-10 with a CAS head ``block3.layer.4.fc`` inside the last block of the third stage
  (on its residual branch) and ``extra_fc`` after the final BN-ReLU, classifier ``fc``; its unused
  ``sub_block1`` is dropped.

``--defense`` reads a ResNet-18 (the same ``conv1``, ``bn1``, ``layer1``-``layer4``, ``linear``) trained
by the code of a relative of CAS (:mod:`cas.family`), each with its modules where our ResNet-18 puts them:

* ``cifs`` (github.com/HanshuYAN/CIFS, ``ResNet18_L4``; a checkpoint dict with ``state_dict``): the
  probes ``layer4.0.Probe.Probe`` (``0.fc`` then ``1``: Linear-Softplus-Linear) and
  ``layer4.1.Probe.Probe.1`` (Linear) of both blocks of the last stage;
* ``ewas`` (github.com/ieslab-ynu/EWAS, ``ResNet_RAS``; a DataParallel checkpoint dict): the head
  ``mask.aux_linear`` on the flattened map between the two blocks of the last stage;
* ``fsr`` (github.com/wkim97/FSR, ``ResNet18_FSR``; a bare state dict): ``separation.sep_net``,
  ``recalibration.rec_net`` and the head ``aux.0`` after the last stage.

``--no-cas`` reads the same backbones without any defence. All of these models read raw [0, 1] pixels,
so the converted model is built with ``normalize=False`` (recorded in its card, with the defence) and
gives the same logits (FSR's: those of its deterministic test-time mask, ``is_eval=True``).
"""
from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import sys
from pathlib import Path

import torch

from .checkpoint import ModelCard, save_checkpoint
from .cli import HelpFormatter
from .family import DEFENSES
from .models import PAPER_ARCHS, CASNet, create_model

ARCHS = PAPER_ARCHS  # the architectures the authors' checkpoints come in
MAX_FILE_BYTES = 2 * 1024**3

# (pattern, replacement) applied in order, first match wins; keys matching nothing are reported
_RULES = {
    "resnet18": [
        (r"conv1\.", "units.stem.0."),
        (r"bn1\.", "units.stem.1."),
        (r"layer(\d)\.(\d)\.", r"units.layer\1_\2."),
        (r"linear\.", "classifier.2."),
    ],
    "vgg16": [
        (r"layer5\.(\d)\.conv\.", lambda m: f"units.conv5_{int(m[1]) + 1}.0."),
        (r"layer5\.(\d)\.bn\.", lambda m: f"units.conv5_{int(m[1]) + 1}.1."),
        (r"layer5\.(\d)\.fc\.", lambda m: f"cas.conv5_{int(m[1]) + 1}.head."),
        (r"layer([1-5])\.(\d)\.([01])\.", lambda m: f"units.conv{m[1]}_{int(m[2]) + 1}.{m[3]}."),
        (r"layer6\.0\.", "classifier.1."), (r"layer6\.1\.", "classifier.2."),
        (r"layer7\.0\.", "classifier.4."), (r"layer7\.1\.", "classifier.5."),
        (r"layer8\.", "classifier.7."),
    ],
    "wrn34_10": [
        (r"sub_block1\.", None),  # built by their WideResNet but never called in its forward
        (r"conv1\.", "units.stem."),
        (r"block(\d)\.layer\.(\d+)\.fc\.", r"cas.block\1_\2.head."),
        (r"block(\d)\.layer\.(\d+)\.convShortcut\.", r"units.block\1_\2.shortcut."),
        (r"block(\d)\.layer\.(\d+)\.", r"units.block\1_\2."),
        (r"bn1\.", "units.final.0."),
        (r"extra_fc\.", "cas.final.head."),
        (r"fc\.", "classifier.2."),
    ],
}


# ResNet-18 only: each defence's modules, tried before the backbone's rules above
_DEFENSE_RULES = {
    "cas": [(r"layer(\d)\.(\d)\.fc\.", r"cas.layer\1_\2.head.")],
    "cifs": [
        (r"layer4\.0\.Probe\.Probe\.0\.fc\.", "cas.layer4_0.hidden."),  # nlBlock(Linear, Softplus)
        (r"layer4\.0\.Probe\.Probe\.1\.", "cas.layer4_0.head."),
        (r"layer4\.1\.Probe\.Probe\.1\.", "cas.layer4_1.head."),  # Probe.0 is the pooling
    ],
    "ewas": [(r"mask\.aux_linear\.", "cas.layer4_0.head.")],
    "fsr": [
        (r"separation\.sep_net\.", "cas.layer4_1.separation."),
        (r"recalibration\.rec_net\.", "cas.layer4_1.recalibration."),
        (r"aux\.0\.", "cas.layer4_1.head."),
    ],
}

# keys by which a state dict shows the modules of a defence (checked in this order)
_MARKS = {
    "cifs": lambda k: re.match(r"layer4\.\d\.Probe\.", k) is not None,
    "ewas": lambda k: k.startswith("mask.aux_linear."),
    "fsr": lambda k: k.startswith(("separation.sep_net.", "recalibration.rec_net.")),
    "cas": lambda k: ".fc." in k or k.startswith("extra_fc."),
}


def _rules(arch: str, defense: str = "cas"):
    return _DEFENSE_RULES[defense] + _RULES[arch] if arch == "resnet18" else _RULES[arch]


def _layout_of(keys) -> str | None:
    """The defence whose modules the authors' ``keys`` hold (None: none of them)."""
    return next((d for d, mark in _MARKS.items() if any(mark(k) for k in keys)), None)


def _label(defense: str) -> str:
    return DEFENSES[defense].label


def _a(defense: str) -> str:
    """The defence's name with its article ("a CIFS", "an EWAS")."""
    label = _label(defense)
    return f"{'an' if label[0] in 'AEFHILMNORSX' else 'a'} {label}"


class ConvertError(ValueError):
    """The file cannot be converted; the message names the problem."""


def check_options(arch: str, cas: bool = True, defense: str = "cas") -> None:
    """Refuse a combination of architecture, ``--no-cas`` and defence that no authors' code saves."""
    if defense not in DEFENSES:
        raise ConvertError(f"unknown defence {defense!r}; choose from {', '.join(DEFENSES)}")
    if defense != "cas" and not cas:
        raise ConvertError(f"--no-cas reads a backbone without any defence; leave out --defense {defense}")
    if defense != "cas" and arch != "resnet18":
        raise ConvertError(f"--defense {defense} is read for --arch resnet18 only, not {arch}")


def build_model(arch: str, cas: bool = True, defense: str = "cas") -> CASNet:
    """Our model with the authors' layout for ``arch`` and ``defense`` (raw [0, 1] input)."""
    check_options(arch, cas, defense)
    if arch == "resnet18":
        if defense != "cas":
            return create_model("resnet18", width=64, defense=defense, normalize=False)
        return create_model("resnet18", width=64, cas=cas, normalize=False)
    if arch == "vgg16":
        return create_model("vgg16", width=64, cas=cas, normalize=False, conv_bias=True, head="mlp")
    if arch == "wrn34_10":
        return create_model("wrn34_10", cas=cas, normalize=False, cas_in_branch=True)
    raise ConvertError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save(model.state_dict())`` file, loaded without unpickling objects."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConvertError(f"{path.name}: {path.stat().st_size / 1e9:.1f} GB is larger than any of the "
                           f"supported models (limit {MAX_FILE_BYTES / 1e9:.0f} GB)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConvertError(f"{path.name}: holds Python objects other than tensors, which are never "
                           f"unpickled here (save the weights with torch.save(model.state_dict())): "
                           f"{str(e).splitlines()[0][:200]}") from None
    except Exception as e:  # noqa: BLE001 - any failure of the safe loader means the same to the user
        raise ConvertError(f"{path.name}: not a readable PyTorch file (truncated, another format, or "
                           f"pickled Python objects, which are never unpickled here): "
                           f"{(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # {"state_dict": ...}, as some training scripts save
    if not isinstance(obj, dict) or not obj:
        raise ConvertError(f"{path.name}: expected a state dict (a mapping of names to tensors), "
                           f"found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"{path.name}: expected only tensors, but {bad[0]!r} is not a tensor")
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def rename(arch: str, state: dict[str, torch.Tensor], defense: str = "cas"):
    """(our names -> tensors, our names -> their names, keys dropped on purpose, keys of no known layout)."""
    out, origin, dropped, unknown = {}, {}, [], []
    rules = _rules(arch, defense)
    for key, value in state.items():
        for pattern, repl in rules:
            m = re.match(pattern, key)
            if m:
                if repl is None:
                    dropped.append(key)
                else:
                    new = m.expand(repl) if isinstance(repl, str) else repl(m)
                    out[new + key[m.end():]] = value
                    origin[new + key[m.end():]] = key
                break
        else:
            unknown.append(key)
    return out, origin, dropped, unknown


def _names(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def convert_state_dict(state: dict[str, torch.Tensor], arch: str, cas: bool = True,
                       name: str = "the file", defense: str = "cas") -> tuple[CASNet, list[str]]:
    """Our model (eval mode) holding the weights of ``state``, and the keys dropped on purpose.
    ``defense``: whose code saved it (``cas``, or a relative of CAS for a ``resnet18``)."""
    model = build_model(arch, cas, defense)
    ours, theirs_by_ours, dropped, unknown = rename(arch, state, defense)  # messages use the authors' names
    expected = model.state_dict()
    extra = [theirs_by_ours[k] for k in ours if k not in expected] + unknown
    missing = [k for k in expected if k not in ours]
    found, label = _layout_of(state), _label(defense)
    hint = ""
    if extra and found and not cas:
        hint = (" It has CAS heads: leave out --no-cas." if found == "cas" else
                f" It has {_label(found)} modules: leave out --no-cas and add --defense {found}.")
    elif (extra or missing) and found not in (None, defense) and cas:
        hint = (f" It looks like {_a(found)} model: "
                + ("leave out --defense." if found == "cas" else
                   f"add --defense {found}." if arch == "resnet18" else
                   f"{_label(found)} models are read for --arch resnet18 only."))
    elif missing and any(k.startswith("cas.") for k in missing) and cas:
        hint = " It has no CAS heads: add --no-cas." if defense == "cas" else \
            f" It has no {label} modules: leave out --defense and add --no-cas."
    what = f"a {arch}{'' if cas else ' without CAS'} in the {label} authors' layout"
    check = "Is the architecture (--arch) right?" if defense == "cas" else \
        "Are the architecture (--arch) and the defence (--defense) right?"
    if extra:
        raise ConvertError(f"{name}: keys that {what} does not have: {_names(extra)}.{hint} {check}")
    if missing:
        raise ConvertError(f"{name}: missing weights for {what} (our names): {_names(missing)}.{hint} {check}")
    for key, ref in expected.items():
        t = ours[key]
        if t.shape != ref.shape:
            raise ConvertError(f"{name}: {theirs_by_ours[key]} has shape {tuple(t.shape)}, a {arch} needs "
                               f"{tuple(ref.shape)}. {check}")
        if ref.is_floating_point() != t.is_floating_point():
            raise ConvertError(f"{name}: {theirs_by_ours[key]} has dtype {t.dtype}, expected "
                               f"{'a floating-point' if ref.is_floating_point() else 'an integer'} tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConvertError(f"{name}: {theirs_by_ours[key]} holds NaN or infinite values")
        ours[key] = t.to(ref.dtype)
    model.load_state_dict(ours, strict=True)
    return model.eval(), dropped


def convert_file(path, arch: str, cas: bool = True, out=None, name: str | None = None,
                 source_name: str | None = None, defense: str = "cas") -> tuple[CASNet, dict]:
    """Convert ``path``; write ``out`` (safetensors with a card) when given. Returns (model, card as a
    JSON mapping).
    ``source_name``: the file's name for messages and the card (default: its own name).
    ``defense``: whose code saved it (``cas``, or ``cifs``, ``ewas``, ``fsr`` for a ``resnet18``)."""
    path = Path(path)
    source_name = source_name or path.name
    check_options(arch, cas, defense)
    try:
        state = read_state_dict(path)
    except ConvertError as e:
        raise ConvertError(str(e).replace(path.name, source_name)) from None
    model, dropped = convert_state_dict(state, arch, cas, source_name, defense)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    label = _label(defense)
    card = ModelCard.for_model(
        model, name=name or (Path(out).stem if out else Path(source_name).stem), method="unknown",
        description=f"Converted from {source_name}, a state dict of the {label} authors' code "
                    f"({arch}{'' if cas else ' without CAS'}, raw [0, 1] input)",
        source={"file": source_name, "sha256": digest, "layout": f"{label} authors' code, {arch}",
                "converted_by": "python -m cas.convert", "dropped_keys": dropped})
    if out:
        save_checkpoint(out, model, card)
    return model, card.to_dict()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cas.convert", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("file", help="a .pt, .pth or .pth.tar state dict saved by the CAS authors' code "
                                 "(or by the code of the defence given with --defense)")
    ap.add_argument("--arch", required=True, choices=ARCHS, help="the architecture it was trained as")
    ap.add_argument("--defense", default="cas", choices=list(DEFENSES),
                    help="whose code saved it: cas (the CAS authors'), or for a resnet18 cifs "
                         "(HanshuYAN/CIFS), ewas (ieslab-ynu/EWAS) or fsr (wkim97/FSR)")
    ap.add_argument("--no-cas", dest="cas", action="store_false",
                    help="the backbone without CAS heads (or any other defence)")
    ap.add_argument("--out", required=True, help="where to write the converted .safetensors checkpoint")
    ap.add_argument("--name", default=None, help="the model's name in the app (default: from --out)")
    a = ap.parse_args(argv)
    if not a.out.endswith(".safetensors"):
        raise SystemExit("error: --out must end in .safetensors")
    try:
        _, card = convert_file(a.file, a.arch, a.cas, a.out, a.name, defense=a.defense)
    except ConvertError as e:
        raise SystemExit(f"error: {e}")
    kind = "" if a.defense == "cas" else f" with {_label(a.defense)}"
    print(f"wrote {a.out}: {a.arch}{kind}{'' if a.cas else ' without CAS'}, {card['num_parameters']:,} parameters"
          + (f"; dropped unused {_names(card['source']['dropped_keys'], 2)}" if card["source"]["dropped_keys"]
             else ""), file=sys.stderr)


if __name__ == "__main__":
    main()

"""CAS module semantics, model contract, forwards and checkpoints."""
import json

import pytest
import torch

import cas
from cas import CheckpointError, create_model, load_checkpoint, save_checkpoint
from cas.layers import CASModule


def test_registry_lists_and_rejects():
    assert set(cas.list_models()) == {"resnet18", "vgg16", "wrn", "wrn34_10"}
    with pytest.raises(ValueError, match="use the architecture 'wrn'"):
        create_model("wrn34_10", depth=28)  # a card saying wrn34_10 must describe a WRN-34-10
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="unknown CAS point"):
        create_model("resnet18", width=4, cas_points=["layer9_0"])


@pytest.mark.parametrize("name,kw,positions", [
    ("resnet18", {"width": 4}, ["layer4_0", "layer4_1"]),
    ("vgg16", {"width": 8}, ["conv5_1", "conv5_2", "conv5_3"]),
    ("wrn", {"depth": 10, "widen_factor": 1}, ["block3_0", "final"]),
])
def test_contract_every_architecture(name, kw, positions):
    model = create_model(name, **kw)
    assert model.cas_points == positions
    x = torch.rand(3, 3, 32, 32)
    for mode in (model.train, model.eval):
        mode()
        assert model(x).shape == (3, 10)
    logits, aux = model.eval().forward_aux(x)
    assert logits.shape == (3, 10) and len(aux) == len(positions)
    details = model.forward_details(x).details
    assert [d.name for d in details] == positions
    plain = create_model(name, cas=False, **kw).eval()
    assert not plain.has_cas and plain.forward_aux(x)[1] == []
    (d,) = plain.forward_details(x).details
    assert torch.equal(d.mask, torch.ones_like(d.mask)) and torch.equal(d.before, d.after)


def test_mask_semantics_train_vs_eval():
    torch.manual_seed(0)
    m = CASModule(6, num_classes=4)
    f = torch.rand(5, 6, 3, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    m.train()
    out = m(f, y)
    assert torch.allclose(out.mask, m.head.weight[y])  # true label's row while training
    assert torch.allclose(out.out, f * m.head.weight[y][:, :, None, None])
    m.eval()
    pred = m.head(f.mean((2, 3))).argmax(1)
    assert torch.allclose(m(f, y).mask, m.head.weight[pred])  # own prediction at test time
    assert torch.allclose(m(f, y, mask="label").mask, m.head.weight[y])  # oracle mask
    soft = torch.softmax(m.head(f.mean((2, 3))), 1) @ m.head.weight
    assert torch.allclose(m(f, mask="soft").mask, soft)
    with pytest.raises(ValueError, match="needs the labels"):
        m(f, mask="label")
    with pytest.raises(ValueError, match="mask must be one of"):
        m(f, mask="argmax")
    # the aux logits come from the unmasked features, and nothing is stored on the module
    assert torch.allclose(out.aux_logits, m.head(f.mean((2, 3))))
    assert set(vars(m)) == set(vars(CASModule(6, num_classes=4)))


def test_model_mask_choice_is_an_argument_not_state():
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.randint(0, 10, (4,))
    a = model(x)
    model.forward_aux(x, y, mask="label")
    model.forward_aux(x, mask="soft")
    assert torch.equal(model(x), a)  # earlier calls left nothing behind
    res = model.forward_details(x)
    for d in res.details:
        assert torch.allclose(d.after, d.before * d.mask, atol=1e-6)
        assert torch.equal(d.mask, model.cas[d.name].head.weight[d.aux_logits.argmax(1)])


def test_gradients_reach_the_auxiliary_heads_through_both_paths():
    torch.manual_seed(0)
    model = create_model("resnet18", width=4).train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, aux = model.forward_aux(x, y)
    torch.nn.functional.cross_entropy(logits, y).backward()  # main loss only
    for mod in model.cas.values():  # the mask is not detached: the main loss trains the head
        assert mod.head.weight.grad is not None and mod.head.weight.grad.abs().sum() > 0
    model.zero_grad()
    logits, aux = model.forward_aux(x, y)
    torch.stack([torch.nn.functional.cross_entropy(a, y) for a in aux]).mean().backward()
    for mod in model.cas.values():
        assert mod.head.weight.grad.abs().sum() > 0 and mod.head.bias.grad.abs().sum() > 0


def test_checkpoint_round_trip_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", width=4, cas_points=["layer3_1", "layer4_1"]).eval()
    x = torch.rand(2, 3, 32, 32)
    card = cas.make_card(model, method="at", epsilon=8, accuracy={"clean": 50.0})
    path = save_checkpoint(tmp_path / "m.safetensors", model, card)
    loaded, card2 = load_checkpoint(path)
    assert not loaded.training and loaded.cas_points == ["layer3_1", "layer4_1"]
    assert torch.equal(loaded(x), model(x))
    assert card2["method"] == "at" and card2["accuracy"] == {"clean": 50.0}
    assert cas.load_model(path) is not None
    half = save_checkpoint(tmp_path / "h.safetensors", model, card, fp16=True)
    assert half.stat().st_size < path.stat().st_size * 0.6
    assert torch.allclose(load_checkpoint(half)[0](x), model(x), atol=5e-2)
    cas.checkpoint.update_card(path, accuracy={"pgd20": 30.0})
    assert cas.read_card(path)["accuracy"] == {"clean": 50.0, "pgd20": 30.0}
    assert torch.equal(load_checkpoint(path)[0](x), model(x))


def test_model_cards_are_typed_and_keep_what_they_do_not_know(tmp_path):
    """ModelCard reads every field of a card, keeps unknown keys (older or newer cards) and their
    order, and writes back the same JSON; the typed loaders give the same card as the dict ones."""
    from cas.checkpoint import ModelCard, load_model_and_card, read_model_card

    model = create_model("resnet18", width=4).eval()
    d = {**cas.make_card(model, method="at", epsilon=8, accuracy={"clean": 50.0}), "cas_positions": ["layer4_1"]}
    card = ModelCard.from_dict(d)
    assert card.arch == "resnet18" and card.cas and card.method == "at" and card.accuracy == {"clean": 50.0}
    assert card.extra == {"cas_positions": ["layer4_1"]} and card.get("cas_positions") == ["layer4_1"]
    assert card.to_dict() == d and list(card.to_dict()) == list(d)
    more = card.updated(merge_dicts=True, accuracy={"pgd20": 30.0}, name="m", heldout_note="new key")
    assert more.accuracy == {"clean": 50.0, "pgd20": 30.0} and more.name == "m" and card.name is None
    assert list(more.to_dict())[-2:] == ["name", "heldout_note"]
    path = save_checkpoint(tmp_path / "m.safetensors", model, more)
    assert read_model_card(path) == more.updated(dtype="float32")
    loaded, typed = load_model_and_card(path)
    assert typed.to_dict() == load_checkpoint(path)[1] and not loaded.training


def test_bad_checkpoint_files_give_clear_errors(tmp_path):
    model = create_model("resnet18", width=4)
    good = save_checkpoint(tmp_path / "good.safetensors", model)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(junk)
    pickle_file = tmp_path / "model.pt"
    torch.save(model.state_dict(), pickle_file)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(pickle_file)
    from safetensors.torch import save_file
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, bare)
    with pytest.raises(CheckpointError, match="no CAS Lab model card"):
        load_checkpoint(bare)
    # card says width 8 but the weights are width 4
    wrong = tmp_path / "wrong.safetensors"
    card = cas.make_card(model)
    card["arch_kwargs"] = {**card["arch_kwargs"], "width": 8}
    save_checkpoint(wrong, model, card)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(wrong)
    card["arch"] = "alexnet"
    save_checkpoint(wrong, model, card)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_checkpoint(wrong)
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no bundled model"):
        cas.load_model("no-such-model", directory=tmp_path)


def test_bundled_names_resolve_through_the_index(tmp_path, monkeypatch):
    model = create_model("resnet18", width=4, cas=False)
    save_checkpoint(tmp_path / "tiny.safetensors", model, cas.make_card(model, method="std"))
    (tmp_path / "index.json").write_text(json.dumps({"models": [
        {"name": "tiny", "file": "tiny.safetensors", "description": "d", "method": "std", "cas": False,
         "accuracy": {}}]}))
    monkeypatch.setenv("CAS_PRETRAINED_DIR", str(tmp_path))
    monkeypatch.setenv("CAS_RUNS_DIR", str(tmp_path / "runs"))
    assert [m["name"] for m in cas.available_models()] == ["tiny"]
    assert not cas.load_model("tiny").has_cas

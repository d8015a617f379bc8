"""`python -m cas.convert`: state dicts in the CAS authors' layout (built here by models written their way,
with random weights and batch-norm statistics) convert into models that give the same logits; every bad
file gets a clear message and nothing is unpickled."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cas
from cas.convert import ConvertError, convert_file, main, read_state_dict

# -- the authors' layouts: same parameter names, same forward (eval mode, argmax masks) -----------------

def _mask(feat, fc):
    aux = fc(feat.mean(dim=(2, 3)))
    return feat * fc.weight[aux.argmax(1)][:, :, None, None]


class TheirResBlock(nn.Module):
    def __init__(self, cin, cout, stride, cas):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        if cas:
            self.fc = nn.Linear(cout, 10)

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))
        return _mask(out, self.fc) if hasattr(self, "fc") else out


class TheirResNet18(nn.Module):
    def __init__(self, cas=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for s, planes in enumerate((64, 128, 256, 512)):
            blocks = [TheirResBlock(cin if i == 0 else planes, planes, (1 if s == 0 else 2) if i == 0 else 1,
                                    cas and s == 3) for i in range(2)]
            cin = planes
            layers.append(nn.ModuleList(blocks) if s == 3 else nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, 10)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        for block in self.layer4:
            out = block(out)
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class TheirCasConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv, self.bn, self.relu, self.fc = nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), \
            nn.ReLU(), nn.Linear(cout, 10)

    def forward(self, x):
        return _mask(self.relu(self.bn(self.conv(x))), self.fc)


class TheirVGG16(nn.Module):
    def __init__(self):
        super().__init__()

        def stage(cins, couts):
            return nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())
                                   for a, b in zip(cins, couts)], nn.MaxPool2d(2))

        self.layer1 = stage([3, 64], [64, 64])
        self.layer2 = stage([64, 128], [128, 128])
        self.layer3 = stage([128, 256, 256], [256] * 3)
        self.layer4 = stage([256, 512, 512], [512] * 3)
        self.layer5 = nn.ModuleList([TheirCasConv(512, 512) for _ in range(3)])
        self.max_pooling = nn.MaxPool2d(2)
        self.layer6 = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU())
        self.layer7 = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU())
        self.layer8 = nn.Linear(512, 10)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        for block in self.layer5:
            out = block(out)
        return self.layer8(self.layer7(self.layer6(self.max_pooling(out).flatten(1))))


class TheirWrnBlock(nn.Module):
    def __init__(self, cin, cout, stride, cas):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)
        if cas:
            self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        branch = _mask(act, self.fc) if hasattr(self, "fc") else act
        out = self.conv2(self.relu2(self.bn2(self.conv1(branch))))
        return out + (x if self.equal else self.convShortcut(act))


class TheirGroup(nn.Module):
    def __init__(self, n, cin, cout, stride, cas_last):
        super().__init__()
        self.layer = nn.ModuleList([TheirWrnBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                  cas_last and i == n - 1) for i in range(n)])

    def forward(self, x):
        for block in self.layer:
            x = block(x)
        return x


class TheirWRN(nn.Module):
    def __init__(self, cas=True):
        super().__init__()
        w = (16, 160, 320, 640)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = TheirGroup(5, w[0], w[1], 1, False)
        self.sub_block1 = TheirGroup(5, w[0], w[1], 1, False)  # unused, as in their code
        self.block2 = TheirGroup(5, w[1], w[2], 2, False)
        self.block3 = TheirGroup(5, w[2], w[3], 2, cas)
        self.bn1, self.relu = nn.BatchNorm2d(640), nn.ReLU()
        self.fc = nn.Linear(640, 10)
        if cas:
            self.extra_fc = nn.Linear(640, 10)

    def forward(self, x):
        out = self.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        if hasattr(self, "extra_fc"):
            out = _mask(out, self.extra_fc)
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


def _randomised(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


CASES = [("resnet18", TheirResNet18, True), ("resnet18", TheirResNet18, False), ("vgg16", TheirVGG16, True),
         ("wrn34_10", TheirWRN, True)]


@pytest.mark.parametrize("arch,cls,with_cas", CASES, ids=[f"{a}-{'cas' if c else 'plain'}" for a, _, c in CASES])
def test_converted_model_gives_the_authors_logits(tmp_path, arch, cls, with_cas):
    torch.manual_seed(0)
    theirs = _randomised(cls(with_cas) if cls is not TheirVGG16 else cls())
    src = tmp_path / "model.pth"
    torch.save({f"module.{k}": v for k, v in theirs.state_dict().items()}, src)  # as DataParallel saves
    out = tmp_path / "converted.safetensors"
    assert main([str(src), "--arch", arch, *([] if with_cas else ["--no-cas"]), "--out", str(out)]) is None
    model, card = cas.load_checkpoint(out)
    assert card["arch_kwargs"]["normalize"] is False and card["source"]["file"] == "model.pth"
    assert model.has_cas == with_cas
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref, got = theirs(x), model(x)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()
    if arch == "wrn34_10":
        assert any(k.startswith("sub_block1.") for k in card["source"]["dropped_keys"])


def _resnet_state():
    return TheirResNet18(True).state_dict()


def _message(tmp_path, obj, arch="resnet18", cas_on=True, raw: bytes | None = None) -> str:
    src = tmp_path / "bad.pth"
    if raw is not None:
        src.write_bytes(raw)
    else:
        torch.save(obj, src)
    with pytest.raises(ConvertError) as e:
        convert_file(src, arch, cas_on)
    return str(e.value)


class Boom:
    def __reduce__(self):  # would run code if it were ever unpickled
        return (exec, ("raise SystemExit('unpickled!')",))


def test_bad_files_get_clear_messages(tmp_path):
    sd = _resnet_state()
    assert "never unpickled" in _message(tmp_path, {"weights": Boom()})
    assert "never unpickled" in _message(tmp_path, None, raw=pickle.dumps({"a": Boom()}))
    full = tmp_path / "full.pth"
    torch.save(sd, full)
    assert "truncated" in _message(tmp_path, None, raw=full.read_bytes()[: full.stat().st_size // 2])
    assert "not a readable PyTorch file" in _message(tmp_path, None, raw=b"hello, not a model")
    assert "expected a state dict" in _message(tmp_path, [torch.zeros(1)])
    assert "'epoch' is not a tensor" in _message(tmp_path, {**sd, "epoch": 3})
    missing = {k: v for k, v in sd.items() if k != "linear.weight"}
    assert "missing weights" in _message(tmp_path, missing) and "classifier.2.weight" in _message(tmp_path, missing)
    assert "does not have: mystery.weight" in _message(tmp_path, {**sd, "mystery.weight": torch.zeros(2)})
    wrong = {**sd, "linear.weight": torch.zeros(10, 256)}
    assert "linear.weight has shape (10, 256)" in _message(tmp_path, wrong)
    assert "NaN" in _message(tmp_path, {**sd, "conv1.weight": sd["conv1.weight"] * float("nan")})
    assert "integer" in _message(tmp_path, {**sd, "bn1.num_batches_tracked": torch.zeros(())})
    assert "leave out --no-cas" in _message(tmp_path, sd, cas_on=False)
    plain = TheirResNet18(False).state_dict()
    assert "add --no-cas" in _message(tmp_path, plain)
    assert "Is the architecture (--arch) right?" in _message(tmp_path, sd, arch="vgg16")


def test_read_state_dict_accepts_a_wrapped_dict(tmp_path):
    sd = _resnet_state()
    src = tmp_path / "wrapped.pt"
    torch.save({"state_dict": sd}, src)
    assert set(read_state_dict(src)) == set(sd)


def test_a_converted_model_is_evaluated_and_diagnosed(tmp_path, cifar_test, capsys):
    """`python -m cas.evaluate FILE --diagnose` on a checkpoint converted from the authors' layout: the
    table with the authors' protocol columns and each attack's indicators with their sentences."""
    from cas.evaluate import main as evaluate_main

    torch.manual_seed(0)
    src = tmp_path / "model.pth"
    torch.save(_randomised(TheirResNet18(True)).state_dict(), src)
    out = tmp_path / "converted.safetensors"
    main([str(src), "--arch", "resnet18", "--out", str(out)])
    evaluate_main([str(out), "--n", "4", "--attacks", "fgsm,authors_pgd,authors_cw", "--batch-size", "4",
                   "--diagnose", "--diagnose-n", "4", "--device", "cpu", "--out", str(tmp_path / "eval")])
    text = capsys.readouterr().out
    assert "| model | clean | FGSM | authors' PGD-20 | authors' CW | worst case |" in text
    for label in ("FGSM", "Authors' PGD-20", "Authors' CW"):
        assert f"converted.safetensors, {label}" in text, label
    assert "Silent success" in text and "Unavailable gradients" in text
    assert (tmp_path / "eval" / "converted" / "authors_pgd.json").exists()

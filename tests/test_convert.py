"""`python -m cas.convert`: state dicts in the CAS authors' layout, and in those of CIFS, EWAS and FSR (built
here by models written their way, with random weights and batch-norm statistics, and saved as their
training scripts save them) convert into models that give the same logits; every bad file gets a clear
message and nothing is unpickled."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

import cas
from cas.convert import ConvertError, convert_file, convert_state_dict, main, read_state_dict

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


# -- the layouts of CAS's relatives (ResNet-18, cas.family), same names and forward as their code ---------

class TheirPlainResNet18(TheirResNet18):
    """Stem, layer1-layer3 and a ModuleList layer4 of plain blocks, linear; subclasses add their modules."""

    def __init__(self):
        super().__init__(cas=False)

    def trunk(self, x):
        return self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))

    def classify(self, out):
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class TheirGlobalAvgFlatten(nn.Module):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


class TheirNlBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.global_avg_flatten, self.fc, self.softplus = TheirGlobalAvgFlatten(), nn.Linear(cin, cout), \
            nn.Softplus(beta=5)

    def forward(self, x):
        return self.softplus(self.fc(self.global_avg_flatten(x)))


class TheirCIFS(nn.Module):
    """The probe and its mask: the softmax of the gradient of the probe's two top logits (test time),
    taken by autograd on detached features with create_graph, spatially averaged and times H x W."""

    def __init__(self, n_feat, mode):
        super().__init__()
        if mode == "linear":
            self.Probe = nn.Sequential(TheirGlobalAvgFlatten(), nn.Linear(n_feat, 10))
        else:
            self.Probe = nn.Sequential(TheirNlBlock(n_feat, 128), nn.Linear(128, 10))
        self.last_mask = None

    def forward(self, feat):
        mask = self._mask(feat)
        self.last_mask = mask.detach().flatten(1)
        return feat * mask, self.Probe(feat)

    def _mask(self, feat):
        n, c, h, w = feat.shape
        feat = feat.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.Probe(feat)
            top = logits.topk(k=2, dim=1).indices
            rows = torch.arange(n)
            score = logits[rows, top[:, 0]].sum() + logits[rows, top[:, 1]].sum()
            grad = torch.autograd.grad(score, feat, create_graph=True)[0]
        grad = F.adaptive_avg_pool2d(grad, (1, 1)) * h * w
        return F.softmax(grad.view(n, c), dim=1).view(n, c, 1, 1)


class TheirCIFSBlock(TheirResBlock):
    def __init__(self, cin, cout, stride, mode):
        super().__init__(cin, cout, stride, cas=False)
        self.Probe = TheirCIFS(cout, mode)

    def forward(self, x):
        return self.Probe(super().forward(x))


class TheirCIFSResNet18(TheirPlainResNet18):
    """ResNet18_L4: a CIFS probe in each block of the last stage; returns (logits, [probe logits])."""

    def __init__(self):
        super().__init__()
        self.layer4 = nn.ModuleList([TheirCIFSBlock(256, 512, 2, "nonlinear"), TheirCIFSBlock(512, 512, 1, "linear")])

    def forward(self, x):
        out, probes = self.trunk(x), []
        for block in self.layer4:
            out, aux = block(out)
            probes.append(aux)
        return self.classify(out), probes


class TheirUMask(nn.Module):
    def __init__(self, c, h, w):
        super().__init__()
        self.aux_linear = nn.Linear(c * h * w, 10)

    def forward(self, x):
        n, c, h, w = x.shape
        fc_out = self.aux_linear(x.view(n, -1))
        return x * self.aux_linear.weight[fc_out.max(1)[1], :].view(-1, c, h, w), fc_out


class TheirEWASResNet18(TheirPlainResNet18):
    """ResNet_RAS: the element-wise mask between the two blocks of layer4; returns (mask logits, logits)."""

    def __init__(self):
        super().__init__()
        self.mask = TheirUMask(512, 4, 4)

    def forward(self, x):
        out, aux = self.mask(self.layer4[0](self.trunk(x)))
        return aux, self.classify(self.layer4[1](out))


def _their_three_convs(c, hidden=64):
    return nn.Sequential(nn.Conv2d(c, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, c, 3, 1, 1, bias=False))


def _their_gumbel_sigmoid(x, tau, is_eval, p=1e-8):
    """The first of a two-way softmax over (log x, log(1 - x)) plus Gumbel noise (0.5 at test time)."""
    r = (1 - x + p).log()
    x = (x + p).log()
    noise = [0.5 * torch.ones_like(x) if is_eval else torch.rand_like(x) for _ in range(2)]
    x_n, r_n = (-(-(u + p).log() + p).log() for u in noise)
    return F.softmax(torch.cat(((x + x_n) / (tau + p), (r + r_n) / (tau + p)), dim=1), dim=1)


class TheirSeparation(nn.Module):
    def __init__(self, c, h, w, tau=0.1):
        super().__init__()
        self.size, self.tau = (c, h, w), tau
        self.sep_net = _their_three_convs(c)

    def forward(self, feat, is_eval=False):
        rob_map = self.sep_net(feat)
        mask = torch.sigmoid(rob_map.reshape(rob_map.shape[0], 1, -1))
        mask = _their_gumbel_sigmoid(mask, self.tau, is_eval)[:, 0].reshape(feat.shape[0], *self.size)
        return feat * mask, feat * (1 - mask), mask


class TheirRecalibration(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.rec_net = _their_three_convs(c)

    def forward(self, nr_feat, mask):
        return nr_feat + self.rec_net(nr_feat) * (1 - mask)


class TheirFSRResNet18(TheirPlainResNet18):
    """ResNet18_FSR: separation and recalibration after layer4; returns (logits, [r], [nr], [rec])."""

    def __init__(self):
        super().__init__()
        self.separation, self.recalibration = TheirSeparation(512, 4, 4), TheirRecalibration(512)
        self.aux = nn.Sequential(nn.Linear(512, 10))

    def forward(self, x, is_eval=False):
        out = self.trunk(x)
        for block in self.layer4:
            out = block(out)
        r_feat, nr_feat, mask = self.separation(out, is_eval=is_eval)
        rec_feat = self.recalibration(nr_feat, mask)
        r, nr, rec = (self.aux(F.adaptive_avg_pool2d(f, 1).flatten(1)) for f in (r_feat, nr_feat, rec_feat))
        return self.classify(r_feat + rec_feat), [r], [nr], [rec]


def _scaled(model: TheirPlainResNet18, defense: str) -> TheirPlainResNet18:
    """Heads large enough that the comparisons are not won trivially: logits of order one without a
    bias (CIFS's masks sum to one over 512 channels, shrinking the features), masks far from uniform (a
    wrong CIFS gradient shows) or of order one (EWAS)."""
    with torch.no_grad():
        model.linear.weight.mul_(10_000 if defense == "cifs" else 100)
        model.linear.bias.zero_()
        if defense == "cifs":
            for block, factor in zip(model.layer4, (10, 50)):  # the MLP's gradient has two weights' factors
                for m in block.Probe.modules():
                    if isinstance(m, nn.Linear):
                        m.weight.mul_(factor)
        elif defense == "ewas":
            model.mask.aux_linear.weight.mul_(100)
        else:
            model.aux[0].weight.mul_(100)
    return model


def _their_checkpoint(defense: str, model: nn.Module) -> tuple[str, object]:
    """(file name, object) as each training script saves it."""
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4).state_dict()
    if defense == "cifs":  # CIFAR10_Res18_CIFS.py: a checkpoint dict, the bare net's state dict
        return "ckp_best.pt", {"state_dict": model.state_dict(), "stop_epoch": 120, "optimizer": sgd}
    if defense == "ewas":  # AT_with_loss.py: a checkpoint dict of a DataParallel model
        return "best_resnet18_lam0.01.pth.tar", {
            "epoch": 120, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "test_nat_acc": 0.8, "test_pgd20_acc": 0.5, "optimizer": sgd}
    return "cifar10_resnet18.pth", model.state_dict()  # FSR train.py: torch.save(net.state_dict())


FAMILY = {"cifs": TheirCIFSResNet18, "ewas": TheirEWASResNet18, "fsr": TheirFSRResNet18}


@pytest.mark.parametrize("defense", list(FAMILY))
def test_converted_family_model_gives_the_authors_logits(tmp_path, defense):
    """Logits, auxiliary logits (and CIFS's masks, FSR's other logits) of their code, in eval mode."""
    torch.manual_seed(0)
    theirs = _scaled(_randomised(FAMILY[defense]()), defense)
    filename, obj = _their_checkpoint(defense, theirs)
    src = tmp_path / filename
    torch.save(obj, src)
    out = tmp_path / "converted.safetensors"
    assert main([str(src), "--arch", "resnet18", "--defense", defense, "--out", str(out)]) is None
    model, card = cas.load_checkpoint(out)
    assert card["arch_kwargs"]["defense"] == defense and card["arch_kwargs"]["normalize"] is False
    assert card["method"] == "unknown" and card["source"]["file"] == filename
    label = defense.upper()
    assert card["source"]["layout"] == f"{label} authors' code, resnet18", card["source"]
    assert f"the {label} authors' code" in card["description"] and model.defense == defense

    x = torch.rand(2, 3, 32, 32)
    if defense == "cifs":
        ref, ref_aux = theirs(x)  # needs autograd for its mask
    elif defense == "ewas":
        with torch.no_grad():
            ref_aux, ref = theirs(x)
        ref_aux = [ref_aux]
    else:
        with torch.no_grad():
            ref, ref_aux, ref_nr, ref_rec = theirs(x, is_eval=True)
    with torch.no_grad():
        got, got_aux, extras = model(x, return_aux=True, return_extras=True)
        details = model.forward_details(x).details
    assert ref.abs().max() > 0.5 and ref_aux[0].abs().max() > 0.5, "small logits compare trivially"

    def same(a, b):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()

    same(got, ref.detach())
    assert len(got_aux) == len(ref_aux)
    for a, b in zip(got_aux, ref_aux):
        same(a, b.detach())
    if defense == "cifs":  # their autograd mask against our closed-form gradient
        for d, block in zip(details, theirs.layer4):
            assert block.Probe.last_mask.max() > 5 / 512, "a near-uniform mask compares trivially"
            same(d.mask, block.Probe.last_mask)
    if defense == "fsr":
        same(extras[0]["nonrobust"], ref_nr[0])
        same(extras[0]["recalibrated"], ref_rec[0])


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


def _state_message(state, defense="cas", cas_on=True, arch="resnet18") -> str:
    with pytest.raises(ConvertError) as e:
        convert_state_dict(state, arch, cas_on, "bad.pth", defense=defense)
    return str(e.value)


def test_a_family_file_with_the_wrong_defense_gets_a_clear_message():
    """Each defence's file, given as another (or as CAS, or with --no-cas): the message names the keys
    that do not fit and says which --defense the file looks like."""
    states = {"cas": _resnet_state(), **{d: cls().state_dict() for d, cls in FAMILY.items()}}
    marks = {"cas": "layer4.0.fc.", "cifs": "layer4.0.Probe.Probe.0.fc.", "ewas": "mask.aux_linear.",
             "fsr": "aux.0."}
    advice = {"cas": "leave out --defense", "cifs": "add --defense cifs", "ewas": "add --defense ewas",
              "fsr": "add --defense fsr"}
    articles = {"cas": "a CAS", "cifs": "a CIFS", "ewas": "an EWAS", "fsr": "an FSR"}
    for saved, sd in states.items():
        for given in states:
            if given == saved:
                continue
            msg = _state_message(sd, given)
            assert "does not have:" in msg and marks[saved] in msg, (saved, given, msg)
            assert f"It looks like {articles[saved]} model: {advice[saved]}." in msg, (saved, given, msg)
            label = given.upper()
            assert f"in the {label} authors' layout" in msg, msg
            assert ("Is the architecture (--arch) right?" if given == "cas"
                    else "Are the architecture (--arch) and the defence (--defense) right?") in msg, msg
        if saved != "cas":
            msg = _state_message(sd, cas_on=False)
            assert f"It has {saved.upper()} modules: leave out --no-cas and add --defense {saved}." in msg, msg
    fsr = states["fsr"]
    partial = {k: v for k, v in fsr.items() if not k.startswith("recalibration.")}
    msg = _state_message(partial, "fsr")
    assert "missing weights for a resnet18 in the FSR authors' layout" in msg
    assert "cas.layer4_1.recalibration.0.weight" in msg
    plain = TheirResNet18(False).state_dict()
    assert "It has no EWAS modules: leave out --defense and add --no-cas." in _state_message(plain, "ewas")
    assert "resnet18 only" in _state_message(plain, "cifs", arch="vgg16")
    assert "leave out --defense fsr" in _state_message(plain, "fsr", cas_on=False)


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

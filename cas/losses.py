"""Training objectives: standard, AT (Madry et al.), TRADES (Zhang et al.), MART (Wang et al.).

Every method is one per-head loss ``head_loss(method, adv_logits, nat_logits, y, beta)``. The CAS term
is added in exactly one place, :func:`training_loss`: the same loss on every auxiliary head, averaged
over the CAS modules, weighted by ``aux_weight`` (2 in the paper). Training examples are crafted as the
authors did (:func:`perturb`): Linf PGD with the model in eval mode, maximising the method's attack
loss on the final head plus ``aux_weight`` x the auxiliary heads, by one of three recipes:

* ``pgd``: PGD-k from a random start (Madry et al.), the paper's recipe;
* ``fgsm_rs``: one signed step of 1.25 eps from a uniform random start, projected to the eps ball
  ("fast AT", Wong et al. 2020);
* ``n_fgsm``: one signed step of eps from uniform noise in a 2 eps box, not projected (N-FGSM,
  de Jorge et al. 2022), which resists catastrophic overfitting at larger budgets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attacks import AttackSettings, auto_step_size, pgd_loop
from .precision import autocast

METHODS = ("std", "at", "trades", "mart")
RECIPES = ("pgd", "fgsm_rs", "n_fgsm")
DEFAULT_BETA = {"std": 0.0, "at": 0.0, "trades": 6.0, "mart": 6.0}


@dataclass(frozen=True)
class LossConfig:
    method: str = "at"
    beta: float | None = None  # TRADES / MART trade-off; None -> 6
    aux_weight: float = 2.0  # weight of the auxiliary (CAS) losses
    eps: float = 8 / 255
    step_size: float | None = None  # None: the recipe's own (pgd: auto_step_size, fgsm_rs 1.25 eps, n_fgsm eps)
    steps: int = 10  # pgd only
    recipe: str = "pgd"  # how training examples are made: pgd | fgsm_rs | n_fgsm
    amp: bool = True  # craft them under bf16 autocast where the hardware does bf16 natively

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.step_size is None:
            object.__setattr__(self, "step_size", {"pgd": auto_step_size(self.eps, self.steps),
                                                   "fgsm_rs": 1.25 * self.eps, "n_fgsm": self.eps}[self.recipe])
        if self.eps < 0 or self.step_size < 0 or self.steps < 1:
            raise ValueError("need eps >= 0, step_size >= 0 and steps >= 1")
        if self.adversarial and not (self.eps > 0 and self.step_size > 0):
            raise ValueError(f"{self.method} training needs a budget epsilon > 0 and a positive step size")

    @property
    def trade_off(self) -> float:
        return DEFAULT_BETA[self.method] if self.beta is None else self.beta

    @property
    def adversarial(self) -> bool:
        return self.method != "std"


def _kl(p_logits, q_logits):
    """Per-sample KL(softmax(q) || softmax(p)) as TRADES writes it: kl_div(log p, q)."""
    return F.kl_div(F.log_softmax(p_logits, 1), F.softmax(q_logits, 1), reduction="none").sum(1)


def head_loss(method: str, adv, nat, y, beta: float) -> torch.Tensor:
    """The method's loss on one head (final or auxiliary), averaged over the batch."""
    if method == "std":
        return F.cross_entropy(nat, y)
    if method == "at":
        return F.cross_entropy(adv, y)
    if method == "trades":
        return F.cross_entropy(nat, y) + beta * _kl(adv, nat).mean()
    if method == "mart":
        p_adv = F.softmax(adv, 1)
        wrong = p_adv.clone()
        wrong.scatter_(1, y[:, None], 0.0)
        bce = F.cross_entropy(adv, y) - torch.log(1.0001 - wrong.max(1).values).mean()
        p_true = F.softmax(nat, 1).gather(1, y[:, None]).squeeze(1)
        kl = F.kl_div(torch.log(p_adv + 1e-12), F.softmax(nat, 1), reduction="none").sum(1)
        return bce + beta * (kl * (1.0 - p_true)).mean()
    raise ValueError(f"unknown method {method!r}")


def runner_up(logits, y):
    """Per image the predicted class, or the second one where the prediction is ``y`` (FSR's label
    for the non-robust part)."""
    top2 = logits.topk(2, dim=1).indices
    return torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])


def extra_terms(extras, logits, y) -> torch.Tensor | None:
    """The terms a defence adds for its further logits (FSR, :mod:`cas.family`): the non-robust part
    is trained towards the class the attack pushes to (:func:`runner_up` of the final logits), the
    recalibrated part towards the label; each averaged over the modules that have it."""
    terms = []
    for name, target in (("nonrobust", runner_up(logits.detach(), y)), ("recalibrated", y)):
        heads = [e[name] for e in extras if name in e]
        if heads:
            terms.append(torch.stack([F.cross_entropy(h.float(), target) for h in heads]).mean())
    return torch.stack(terms).sum() if terms else None


def training_loss(model, x, y, x_adv, cfg: LossConfig):
    """Loss for one update (call in train mode: masks use ``y``). Returns (loss, logits of the input
    the method trains on, for accuracy bookkeeping). The auxiliary heads get the method's loss, and a
    defence's further logits (FSR's) their cross-entropy terms (:func:`extra_terms`), both weighted
    by ``aux_weight``."""
    nat = adv = None
    if cfg.method in ("std", "trades", "mart"):
        nat = model(x, y, return_aux=True, return_extras=True)
    if cfg.method != "std":
        adv = model(x_adv, y, return_aux=True, return_extras=True)
    heads_nat = [nat[0], *nat[1]] if nat else None
    heads_adv = [adv[0], *adv[1]] if adv else None
    n = len((heads_nat or heads_adv))
    per_head = [head_loss(cfg.method, heads_adv[i].float() if heads_adv else None,
                          heads_nat[i].float() if heads_nat else None, y, cfg.trade_off) for i in range(n)]
    loss = per_head[0]
    if n > 1:  # the CAS term, for every method
        loss = loss + cfg.aux_weight * torch.stack(per_head[1:]).mean()
    trained = adv or nat
    extra = extra_terms(trained[2], trained[0], y)
    if extra is not None:
        loss = loss + cfg.aux_weight * extra
    return loss, trained[0]


def _attack_objective(cfg: LossConfig, nat_heads):
    def objective(model, x_adv, y, target, s):
        logits, aux = model(x_adv, return_aux=True)
        heads = [logits, *aux]
        if cfg.method == "trades":
            per = [_kl(h.float(), n) for h, n in zip(heads, nat_heads)]
        else:  # AT and MART craft with cross-entropy
            per = [F.cross_entropy(h.float(), y, reduction="none") for h in heads]
        loss = per[0]
        if len(per) > 1:
            loss = loss + cfg.aux_weight * torch.stack(per[1:]).mean(0)
        return loss, None
    return objective


def perturb(model, x, y, cfg: LossConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time adversarial examples (call with the model in eval mode, as the authors did)."""
    if not cfg.adversarial:
        return x
    nat_heads = None
    if cfg.method == "trades":
        with torch.no_grad(), autocast(x.device, cfg.amp):
            logits, aux = model(x, return_aux=True)
            nat_heads = [h.float() for h in (logits, *aux)]
    objective = _attack_objective(cfg, nat_heads)
    if cfg.recipe == "n_fgsm":  # noise in a 2 eps box, one step of eps, no projection back to eps
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * 2 * cfg.eps
        x0 = (x + noise).clamp(0, 1).requires_grad_(True)
        with torch.enable_grad(), autocast(x.device, cfg.amp):
            (grad,) = torch.autograd.grad(objective(model, x0, y, None, None)[0].sum(), x0)
        return (x0.detach() + cfg.step_size * grad.sign()).clamp(0, 1)
    if cfg.recipe == "fgsm_rs":  # one step from a uniform start (Wong et al.), for every method
        s = AttackSettings(eps=cfg.eps, step_size=cfg.step_size, steps=1, random_start=True, amp=cfg.amp)
    else:  # PGD-k; TRADES and MART start next to x, as their authors did
        start = "normal" if cfg.method in ("trades", "mart") else True
        s = AttackSettings(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps, random_start=start,
                           amp=cfg.amp)
    return pgd_loop(model, x, y, s.validated(), objective, keep_best=False, generator=generator)

"""Classification heads of the CAMRI paper (Fig. 2, Table 1): each owns its class weights and its loss.

Notation (paper and ../shared/paper/SETUP.md): N samples, K classes, feature z_n (D-dim), class weight
vectors W_k (rows of ``module.weight``, shape (K, D)), target t_n, scale s, margin m **in radians**.
cos θ_k = W_k·z_n / (‖W_k‖ ‖z_n‖); angles are in radians inside this module.

Heads (``build_loss(name, ...)``):
- ``ce``        linear layer with bias, softmax cross-entropy (Fig. 2a).
- ``wce``       weighted cross-entropy (Panchapagesan et al., Interspeech 2016): a sample of an important
                class weighs ``weight``, every other sample 1 (Fig. 2b).
- ``crwwce``    real-world-weight cross-entropy (Ho & Wookey, IEEE Access 2019), single-label multi-class
                form with false-negative and false-positive weights (Fig. 2b); see ``LinearHead``.
- ``l2softmax`` L2-constrained softmax: logits s·cos θ_k (Fig. 2c).
- ``arcface``   target logit s·cos(θ_t + m) for every class (Deng et al., CVPR 2019; Fig. 2d-1).
- ``camri``     target logit s·cos(θ_t + m_t), m_t = m for an important class, 0 otherwise (Fig. 2d-2).
                Several important classes, each with its own margin.

Every head: ``module(features, targets)`` -> scalar loss (mean over the batch);
``module.logits(features)`` -> (N, K) prediction logits, never with a margin (the paper applies the margin
only in training); ``module.cosines(features)`` -> (N, K) cos θ; ``module.weight`` -> (K, D).

The three angular heads are one mechanism (``AngularHead``) with a per-class margin vector m_k:
all zeros (L2-softmax), all m (ArcFace), m on the important classes only (CAMRI).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LossInfo:
    """One entry of the loss registry ``LOSSES``: everything the rest of camri needs to know about a loss.

    name: the config name (``--loss``); display: the paper's name (tables, figures);
    axes: the TrainConfig fields that make one of its settings (grid axes, hyperparameters in tables), in
        slug order; the others are ignored for it (a CE run's config still carries the default margin);
    class_specific: defined per important class (trained once per class), else shared by every class;
    rank: display order in tables and figures (0 first; the paper lists CAMRI first, CE last);
    in_table1: a row of the paper's Table 1 (L2-softmax is not).
    """

    name: str
    display: str
    axes: tuple[str, ...]
    class_specific: bool
    rank: int
    in_table1: bool = True


#: The loss registry, in definition (and grid expansion) order: Fig. 2's panel order.
LOSSES = {
    info.name: info
    for info in (
        LossInfo("ce", "CE", (), False, 5),
        LossInfo("wce", "WCE", ("weight",), True, 4),
        LossInfo("crwwce", "CRWWCE", ("weight", "fp_weight"), True, 3),
        LossInfo("l2softmax", "L2-softmax", ("scale",), False, 2, in_table1=False),
        LossInfo("arcface", "ArcFace", ("margin", "scale"), False, 1),
        LossInfo("camri", "CAMRI", ("margin", "scale"), True, 0),
    )
}
LOSS_NAMES = tuple(LOSSES)
#: The losses in display order (tables, figures).
DISPLAY_ORDER = tuple(sorted(LOSSES, key=lambda name: LOSSES[name].rank))
#: The roles an important class is chosen for from the CE baseline (camri.protocol.choose_important).
ROLES = ("worst1", "worst2", "median")


def loss_info(name: str) -> LossInfo:
    """The registry entry of loss ``name``; a ValueError naming the valid ones otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: valid are {', '.join(LOSS_NAMES)}")
    return LOSSES[name]


#: arccos has slope -1/sqrt(1 - x²), infinite at |x| = 1. Clamping its input to [-1 + eps, 1 - eps] keeps
#: the gradient finite (at most ~1/sqrt(2 eps) ≈ 2236 in magnitude). The authors' code uses the same
#: 1e-7; it is above float32's spacing near 1 (6e-8), so 1 - eps is a distinct float32 number.
ACOS_EPS = 1e-7


def paper_margin(k: float, denominator: int = 64) -> float:
    """The paper's margin notation m = k·π/denominator (``m_deno``), in radians."""
    return k * math.pi / denominator


_PI_FORM = re.compile(r"^\s*([0-9.]*)\s*\*?\s*(pi|π)\s*(?:/\s*([0-9.]+))?\s*$")


def parse_margin(text: str | float, name: str = "margin") -> float:
    """Parse a margin given in radians (``0.196``) or the paper's notation (``4pi/64``, ``4*pi/64``,
    ``pi/16``, ``4π/64``) into radians. Anything else (None, a list, a bool, a zero denominator) is a
    ValueError naming the parameter ``name``; the range is checked by the loss (``build_loss``)."""
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise ValueError(f"{name} must be a number of radians (e.g. 0.196) or k*pi/d (e.g. 4pi/64); got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _PI_FORM.match(text.lower())
        try:
            if match:
                numerator = float(match.group(1)) if match.group(1) else 1.0
                denominator = float(match.group(3)) if match.group(3) else 1.0
                value = numerator * math.pi / denominator
            else:
                value = float(text)
        except (ValueError, ZeroDivisionError):
            value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"{name} {text!r} is not a number of radians (e.g. 0.196) nor in the paper's notation "
            "k*pi/d with d > 0 (e.g. 4pi/64)"
        )
    return value


def parse_margins(value, name: str = "margin") -> tuple[float, ...]:
    """A margin or a list of margins (one per important class) as a non-empty tuple of radians."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise ValueError(f"{name} must give at least one margin; got an empty list")
    return tuple(parse_margin(v, name) for v in values)


def margin_target_cosine(cos_t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """ψ(θ, m): the margin-penalised target cosine, elementwise.

    ψ = cos(θ + m) for θ + m ≤ π. Beyond, cos(θ + m) would rise again as θ grows, so the loss would push a
    badly misclassified feature *further* from its class. The authors' code ignores this; we follow the
    common ArcFace practice (InsightFace's non-"easy" margin) and switch to cos θ − m·sin m there, which
    keeps ψ non-increasing in θ over [0, π]. With m = 4π/64 this branch only concerns θ > 168.75°.
    Where m = 0 the input cosine is returned unchanged (no acos/cos round trip), so a zero margin is
    exactly the L2-softmax logit.

    cos_t: (N,) target cosines; margin: (N,) margins in radians, 0 <= m < π.
    """
    theta = torch.acos(cos_t.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS))
    shifted = torch.where(
        theta + margin <= math.pi, torch.cos(theta + margin), torch.cos(theta) - margin * torch.sin(margin)
    )
    return torch.where(margin > 0, shifted, cos_t)


class Head(nn.Module):
    """Base class: a classification head that owns its (K, D) class weights.

    Override points (kept small, as in pytorch-metric-learning): ``logits`` (prediction logits),
    ``training_logits`` (logits the loss sees, e.g. with a margin) and ``per_sample_loss``.
    """

    def __init__(self, num_classes: int, feature_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        # Glorot-uniform, as the authors' Keras heads (nn.init's fan-in/fan-out are symmetric in K, D).
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_classes, feature_dim)))

    def _check(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features must have shape (N, {self.feature_dim}) (N samples, feature_dim = "
                f"{self.feature_dim}); got {tuple(features.shape)}"
            )
        # The head runs in float32 (or float64) even under bf16 autocast: acos near ±1 and the softmax
        # over s·cos θ need more than bf16's 8 bits of mantissa.
        return features if features.dtype in (torch.float32, torch.float64) else features.float()

    def cosines(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) cos θ between the L2-normalised features and the L2-normalised class weights."""
        features = self._check(features)
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) prediction logits (no margin)."""
        raise NotImplementedError

    def training_logits(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, K) logits the loss is computed on; the prediction logits unless a subclass adds a margin."""
        return self.logits(features)

    def per_sample_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) softmax cross-entropy of each sample."""
        return F.cross_entropy(logits, targets, reduction="none")

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss, mean over the batch. features: (N, D) float; targets: (N,) int64 in [0, K)."""
        with torch.autocast(features.device.type, enabled=False):
            features = self._check(features)
            if targets.shape != features.shape[:1]:
                raise ValueError(
                    f"targets must have shape ({features.shape[0]},) to match features; got {tuple(targets.shape)}"
                )
            return self.per_sample_loss(self.training_logits(features, targets), targets).mean()


class LinearHead(Head):
    """Linear layer with bias + (weighted) softmax cross-entropy: ``ce``, ``wce`` and ``crwwce``.

    Per-sample loss, with p = softmax(W z + b):

        ℓ_n = − w_FN[t_n] · log p_{t_n} − Σ_{j ≠ t_n} w_FP[t_n, j] · log(1 − p_j)

    This is Ho & Wookey's real-world-weight cross-entropy for single-label multi-class classification
    (IEEE Access 2019, the multicategory RWWCE: a false-negative weight per true class, and a
    false-positive weight matrix whose entry [k, j] costs the probability put on class j when the truth
    is k). Our parameterisation for an important class c:
      w_FN[c] = ``weight``, 1 for every other class;
      w_FP[c, j] = ``fp_weight`` for j ≠ c (probability that a true-c sample leaks to another class,
      i.e. the mislabelings that become false negatives of c), 0 elsewhere.
    ``ce``: w_FN = 1, w_FP = 0. ``wce`` (Panchapagesan et al. 2016): w_FN as above, w_FP = 0.
    The batch mean divides by N (not by Σ w as torch's ``CrossEntropyLoss(weight=...)``), so that weight 1
    is exactly CE and the loss scale grows with the weight, as in the cited papers.
    """

    def __init__(self, num_classes, feature_dim, fn_weight: torch.Tensor, fp_weight: torch.Tensor):
        super().__init__(num_classes, feature_dim)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("fn_weight", fn_weight)  # (K,)
        self.register_buffer("fp_weight", fp_weight)  # (K, K), zero diagonal

    def cosines(self, features):
        """(N, K) cos θ against the linear layer's weight rows; the bias is ignored."""
        return super().cosines(features)

    def logits(self, features):
        return F.linear(self._check(features), self.weight, self.bias)

    def per_sample_loss(self, logits, targets):
        loss = self.fn_weight[targets] * F.cross_entropy(logits, targets, reduction="none")
        fp = self.fp_weight[targets]  # (N, K)
        if torch.any(fp > 0):
            # log(1 − p_j) = log Σ_{i≠j} exp(l_i) − logsumexp(l): stable even when p_j → 1.
            k = logits.shape[1]
            others = (
                logits.unsqueeze(1)
                .expand(-1, k, -1)
                .masked_fill(torch.eye(k, dtype=torch.bool, device=logits.device), float("-inf"))
            )
            log_not_p = torch.logsumexp(others, dim=2) - torch.logsumexp(logits, dim=1, keepdim=True)
            loss = loss - (fp * log_not_p).sum(dim=1)
        return loss


class AngularHead(Head):
    """Normalised weights and features, logits s·cos θ_k; the target logit gets s·ψ(θ_t, m_t).

    ``margins`` is the (K,) margin vector m_k in radians: zeros = L2-softmax, constant = ArcFace,
    non-zero on the important classes only = CAMRI. No bias (as in the authors' code).
    """

    def __init__(self, num_classes, feature_dim, margins: torch.Tensor, scale: float):
        super().__init__(num_classes, feature_dim)
        self.scale = float(scale)
        self.register_buffer("margins", margins)  # (K,) radians

    def logits(self, features):
        return self.scale * self.cosines(features)

    def training_logits(self, features, targets):
        cos = self.cosines(features)
        target = targets.unsqueeze(1)
        cos_t = cos.gather(1, target).squeeze(1)
        psi = margin_target_cosine(cos_t, self.margins[targets].to(cos.dtype))
        return self.scale * cos.scatter(1, target, psi.unsqueeze(1))


def _valid_important(important, num_classes) -> tuple[int, ...]:
    important = tuple(int(c) for c in important)
    bad = [c for c in important if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"important classes {bad} are out of range: allowed are 0..{num_classes - 1}")
    if len(set(important)) != len(important):
        raise ValueError(f"important classes {list(important)} repeat a class: list each class once")
    return important


def _valid_margins(margin, important) -> list[float]:
    margins = list(parse_margins(margin))
    for m in margins:
        if not 0.0 <= m < math.pi:
            raise ValueError(f"margin {m} is out of range: allowed is 0 <= margin < pi (radians)")
    if len(margins) == 1:
        return margins * max(len(important), 1)
    if len(margins) != len(important):
        raise ValueError(
            f"margin has {len(margins)} values but there are {len(important)} important classes: "
            "give one margin, or one per important class"
        )
    return margins


def build_loss(
    name: str,
    num_classes: int,
    feature_dim: int,
    *,
    important: Sequence[int] = (),
    margin: float | str | Sequence[float | str] = paper_margin(4),
    scale: float = 16.0,
    weight: float = 2.0,
    fp_weight: float = 1.0,
) -> Head:
    """Build the head ``name`` (one of ``LOSS_NAMES``) for K = ``num_classes`` and D = ``feature_dim``.

    important: class indices that matter (``wce``, ``crwwce``, ``camri`` need at least one; the other
        losses accept and ignore them).
    margin: radians, 0 <= m < π (or the paper's notation, ``parse_margin``); one, or one per important
        class (``camri``). Default 4π/64, the authors' setting for cat. ``paper_margin(k)`` is k·π/64.
    scale: s > 0 of the angular heads (default 16, the authors' setting for cat and dog).
    weight: > 0, WCE weight / CRWWCE false-negative weight of the important classes (default 2).
    fp_weight: >= 0, CRWWCE false-positive weight (default 1).
    """
    info = loss_info(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")
    if feature_dim < 1:
        raise ValueError(f"feature_dim must be at least 1; got {feature_dim}")
    important = _valid_important(important, num_classes)
    if info.class_specific and not important:
        raise ValueError(f"loss {name!r} needs at least one important class (important=...)")
    margins = _valid_margins(margin, important)
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale}")
    if not weight > 0:
        raise ValueError(f"weight must be > 0; got {weight}")
    if not fp_weight >= 0:
        raise ValueError(f"fp_weight must be >= 0; got {fp_weight}")

    if name in ("ce", "wce", "crwwce"):
        fn = torch.ones(num_classes)
        fp = torch.zeros(num_classes, num_classes)
        if name != "ce":
            fn[list(important)] = weight
        if name == "crwwce":
            for c in important:
                fp[c] = fp_weight
                fp[c, c] = 0.0
        return LinearHead(num_classes, feature_dim, fn, fp)

    per_class = torch.zeros(num_classes)
    if name == "arcface":
        if len(set(margins)) > 1:
            raise ValueError("arcface takes one margin for every class; got several")
        per_class.fill_(margins[0])
    elif name == "camri":
        per_class[list(important)] = torch.tensor(margins)
    return AngularHead(num_classes, feature_dim, per_class, scale)

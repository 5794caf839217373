"""camri.losses against hand computations at known 2-D angles, an independent library, and edge cases."""

import math

import pytest
import torch

from camri.losses import LOSS_NAMES, build_loss, margin_target_cosine, paper_margin, parse_margin

DEG = math.pi / 180


def unit(angle_deg, norm=1.0):
    return [norm * math.cos(angle_deg * DEG), norm * math.sin(angle_deg * DEG)]


def three_class_head(name, **kwargs):
    """K = 3 weight vectors at 0°, 120°, 240° (the paper's Fig. 2 setting), D = 2."""
    head = build_loss(name, 3, 2, **kwargs).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([unit(0), unit(120), unit(240)], dtype=torch.float64))
        if hasattr(head, "bias"):
            head.bias.zero_()
    return head


def softmax_nll(logits, target):
    # log Σ_k exp(l_k − l_t): the same quantity as −log softmax_t, without cancellation.
    return math.log(sum(math.exp(v - logits[target]) for v in logits))


# A feature at 100° with norm 2: θ = (100°, 20°, 140°) to the three weights.
Z = torch.tensor([unit(100, 2.0)], dtype=torch.float64)
THETA = [100, 20, 140]


def test_l2softmax_hand_value():
    s = 8.0
    head = three_class_head("l2softmax", scale=s)
    expected = softmax_nll([s * math.cos(t * DEG) for t in THETA], 1)
    assert head(Z, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-9)
    assert head.logits(Z)[0].tolist() == pytest.approx([s * math.cos(t * DEG) for t in THETA], rel=1e-9)
    assert head.cosines(Z)[0].tolist() == pytest.approx([math.cos(t * DEG) for t in THETA], rel=1e-9)


@pytest.mark.parametrize("name", ["arcface", "camri"])
def test_margin_on_target_hand_value(name):
    s, m = 16.0, paper_margin(4)  # 11.25°
    head = three_class_head(name, scale=s, margin=m, important=[1])
    logits = [s * math.cos(t * DEG) for t in THETA]
    logits[1] = s * math.cos(20 * DEG + m)
    # the margin buffer was float32 before .double()
    assert head(Z, torch.tensor([1])).item() == pytest.approx(softmax_nll(logits, 1), rel=1e-7)
    # The prediction logits never carry the margin.
    assert head.logits(Z)[0, 1].item() == pytest.approx(s * math.cos(20 * DEG), rel=1e-9)


def test_camri_margin_only_for_important_class():
    s, m = 16.0, paper_margin(4)
    camri = three_class_head("camri", scale=s, margin=m, important=[1])
    arcface = three_class_head("arcface", scale=s, margin=m)
    # Target 0 is not important: CAMRI is plain s·cos θ, ArcFace adds the margin to θ_0 = 100°.
    plain = [s * math.cos(t * DEG) for t in THETA]
    with_margin = list(plain)
    with_margin[0] = s * math.cos(100 * DEG + m)
    assert camri(Z, torch.tensor([0])).item() == pytest.approx(softmax_nll(plain, 0), rel=1e-9)
    # the margin buffer was float32 before .double()
    assert arcface(Z, torch.tensor([0])).item() == pytest.approx(softmax_nll(with_margin, 0), rel=1e-7)


def test_camri_several_important_classes_each_own_margin():
    s = 4.0
    head = three_class_head("camri", scale=s, margin=[0.1, 0.3], important=[2, 0])
    z = torch.cat([Z, Z, Z])
    y = torch.tensor([0, 1, 2])
    per_sample = []
    for target, m in [(0, 0.3), (1, 0.0), (2, 0.1)]:
        logits = [s * math.cos(t * DEG) for t in THETA]
        logits[target] = s * math.cos(THETA[target] * DEG + m)
        per_sample.append(softmax_nll(logits, target))
    # the margin buffer was float32 before .double()
    assert head(z, y).item() == pytest.approx(sum(per_sample) / 3, rel=1e-7)


def test_ce_hand_value():
    head = three_class_head("ce")
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, -0.25, 0.0]))
    z = Z[0].tolist()
    W = [unit(0), unit(120), unit(240)]
    logits = [W[k][0] * z[0] + W[k][1] * z[1] + b for k, b in enumerate([0.5, -0.25, 0.0])]
    assert head(Z, torch.tensor([2])).item() == pytest.approx(softmax_nll(logits, 2), rel=1e-9)
    # cosines ignore the bias
    assert head.cosines(Z)[0].tolist() == pytest.approx([math.cos(t * DEG) for t in THETA], rel=1e-9)


def _linear_logits(z):
    W = [unit(0), unit(120), unit(240)]
    return [W[k][0] * z[0] + W[k][1] * z[1] for k in range(3)]


def test_wce_hand_value():
    head = three_class_head("wce", important=[1], weight=3.0)
    z = torch.cat([Z, Z])
    y = torch.tensor([1, 0])
    logits = _linear_logits(Z[0].tolist())
    expected = (3.0 * softmax_nll(logits, 1) + softmax_nll(logits, 0)) / 2  # mean over N, not over Σw
    assert head(z, y).item() == pytest.approx(expected, rel=1e-9)


def test_crwwce_hand_value():
    head = three_class_head("crwwce", important=[1], weight=3.0, fp_weight=0.5)
    z = torch.cat([Z, Z])
    y = torch.tensor([1, 0])
    logits = _linear_logits(Z[0].tolist())
    total = sum(math.exp(v) for v in logits)
    p = [math.exp(v) / total for v in logits]
    important_sample = -3.0 * math.log(p[1]) - 0.5 * (math.log(1 - p[0]) + math.log(1 - p[2]))
    other_sample = -math.log(p[0])  # w_FN = 1 and no false-positive weights for a non-important truth
    assert head(z, y).item() == pytest.approx((important_sample + other_sample) / 2, rel=1e-9)


def test_crwwce_stable_when_a_probability_is_one():
    head = three_class_head("crwwce", important=[0], weight=2.0, fp_weight=1.0)
    z = torch.tensor([unit(120, 500.0)], dtype=torch.float64, requires_grad=True)  # p_1 ≈ 1
    loss = head(z, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_camri_with_zero_margin_equals_l2softmax():
    torch.manual_seed(0)
    z, y = torch.randn(32, 5), torch.randint(0, 4, (32,))
    assert (y == 2).any()  # the batch has important targets, where a margin would act
    camri = build_loss("camri", 4, 5, important=[2], margin=0.0, scale=8.0)
    l2 = build_loss("l2softmax", 4, 5, scale=8.0)
    # Only the class weights are copied: each head keeps its own margin buffer.
    l2.weight.data.copy_(camri.weight.data)
    assert torch.equal(camri(z, y), l2(z, y))
    # ... and a margin > 0 on the important class makes them differ.
    with_margin = build_loss("camri", 4, 5, important=[2], margin=1.0, scale=8.0)
    with_margin.weight.data.copy_(camri.weight.data)
    assert not torch.allclose(with_margin(z, y), l2(z, y))


def test_camri_on_all_important_batch_equals_arcface():
    torch.manual_seed(1)
    z = torch.randn(16, 6)
    y = torch.full((16,), 3)
    camri = build_loss("camri", 5, 6, important=[3], margin=0.3, scale=10.0)
    arcface = build_loss("arcface", 5, 6, margin=0.3, scale=10.0)
    arcface.weight.data.copy_(camri.weight.data)
    assert torch.allclose(camri(z, y), arcface(z, y), rtol=0, atol=1e-6)
    # ... and differs as soon as a non-important sample is in the batch.
    y[0] = 1
    assert not torch.allclose(camri(z, y), arcface(z, y))


def _copy_linear(source, target):
    """Copy the class weights and bias only; the fn_weight / fp_weight buffers stay the target's own."""
    with torch.no_grad():
        target.weight.copy_(source.weight)
        target.bias.copy_(source.bias)
    return target


def test_wce_and_crwwce_reduce_to_ce():
    torch.manual_seed(2)
    z, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    assert (y == 1).any()  # the batch has important targets, where a weight would act
    ce = build_loss("ce", 3, 4)
    with torch.no_grad():
        ce.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))  # a non-zero bias, so that copying it matters
    wce = _copy_linear(ce, build_loss("wce", 3, 4, important=[1], weight=1.0))
    crw = _copy_linear(ce, build_loss("crwwce", 3, 4, important=[1], weight=1.0, fp_weight=0.0))
    for other in (wce, crw):
        assert torch.equal(ce(z, y), other(z, y))
    # ... and a weight != 1 (or a false-positive weight > 0) makes them differ.
    for other in (
        build_loss("wce", 3, 4, important=[1], weight=3.0),
        build_loss("crwwce", 3, 4, important=[1], weight=3.0, fp_weight=0.0),
        build_loss("crwwce", 3, 4, important=[1], weight=1.0, fp_weight=0.5),
    ):
        assert not torch.allclose(ce(z, y), _copy_linear(ce, other)(z, y))


def _angular_nll(cos, y, s, target_cos):
    """Mean softmax NLL of logits s·cos θ with the target cosine replaced by ``target_cos`` (float64)."""
    logits = s * cos.scatter(1, y[:, None], target_cos[:, None])
    return (torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None]).squeeze(1)).mean().item()


def test_arcface_equals_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(3)
    k, d, s, m = 7, 16, 16.0, paper_margin(5)
    head = build_loss("arcface", k, d, margin=m, scale=s).double()
    reference = pml.ArcFaceLoss(num_classes=k, embedding_size=d, margin=math.degrees(m), scale=s)
    reference.W.data = head.weight.data.t().clone()  # PML's W is feature_dim x K
    y = torch.randint(0, k, (64,))
    w = head.weight.data

    def target_angle(z):
        return torch.acos(head.cosines(z).gather(1, y[:, None]).squeeze(1))

    # Features near their own class (θ_t + m < π): both definitions agree, value for value.
    z = w[y] + 0.8 * torch.randn(64, d, dtype=torch.float64)
    assert (target_angle(z) + m < math.pi).all()
    assert head(z, y).item() == pytest.approx(reference(z, y).item(), rel=1e-6)
    # Features pointing away from their class, θ_t + m > π on every sample, where cos(θ + m) would rise
    # again: both switch to cos θ − m sin m (PML since its PR #539, 2022; pyproject requires PML >= 2.3).
    # Both against that formula by hand, and the switch matters: plain cos(θ + m) is another value.
    z = -torch.nn.functional.normalize(w[y], dim=1) + 0.02 * torch.randn(64, d, dtype=torch.float64)
    theta = target_angle(z)
    assert (theta + m > math.pi).all()
    cos = head.cosines(z)
    by_hand = _angular_nll(cos, y, s, torch.cos(theta) - m * math.sin(m))
    assert head(z, y).item() == pytest.approx(by_hand, rel=1e-7)  # the margin buffer was float32
    assert reference(z, y).item() == pytest.approx(by_hand, rel=1e-6)
    assert abs(by_hand - _angular_nll(cos, y, s, torch.cos(theta + m))) > 1e-3


def test_margin_target_cosine_is_monotone_and_switches_beyond_pi():
    m = torch.tensor(0.5, dtype=torch.float64)
    theta = torch.linspace(0.01, math.pi - 0.01, 2001, dtype=torch.float64)  # away from the clamp at ±1
    psi = margin_target_cosine(torch.cos(theta), m.expand_as(theta))
    assert (psi[1:] <= psi[:-1] + 1e-12).all(), "psi must not increase with theta"
    beyond = theta > math.pi - 0.5 + 1e-6
    assert torch.allclose(psi[beyond], torch.cos(theta[beyond]) - 0.5 * math.sin(0.5), atol=1e-6)
    inside = theta < math.pi - 0.5 - 1e-6
    assert torch.allclose(psi[inside], torch.cos(theta[inside] + 0.5), atol=1e-6)


EDGE_FEATURES = {
    "parallel": lambda w, t: 3.0 * w[t : t + 1],
    "antiparallel": lambda w, t: -2.0 * w[t : t + 1],
    "zero": lambda w, t: torch.zeros(1, w.shape[1], dtype=w.dtype),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(EDGE_FEATURES))
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradients_finite_at_edges(name, case, dtype):
    head = build_loss(name, 4, 3, important=[1], margin=0.4, scale=16.0).to(dtype)
    z = EDGE_FEATURES[case](head.weight.detach(), 1).clone().requires_grad_(True)
    loss = head(z, torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradcheck_float64(name):
    torch.manual_seed(4)
    head = build_loss(
        name,
        4,
        3,
        important=[1, 2],
        margin=[0.3, 0.2] if name == "camri" else 0.3,
        scale=4.0,
        weight=2.0,
        fp_weight=0.5,
    ).double()
    y = torch.tensor([0, 1, 2, 3, 1])
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: head(f, y), (z,))


def test_paper_margin_and_parse():
    assert paper_margin(4) == pytest.approx(4 * math.pi / 64)
    for text in ("4pi/64", "4*pi/64", "4π/64", " 4 pi / 64 "):
        assert parse_margin(text) == pytest.approx(math.pi / 16)
    assert parse_margin("pi/16") == pytest.approx(math.pi / 16)
    assert parse_margin("0.2") == 0.2
    with pytest.raises(ValueError, match="margin"):
        parse_margin("four")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "focal"}, "unknown loss 'focal': valid are ce, wce, crwwce, l2softmax, arcface, camri"),
        ({"name": "camri", "important": [5]}, r"important classes \[5\] are out of range: allowed are 0..3"),
        ({"name": "camri", "important": [1, 1]}, "repeat"),
        ({"name": "camri", "important": []}, "needs at least one important class"),
        ({"name": "camri", "important": [1], "margin": -0.1}, "0 <= margin < pi"),
        ({"name": "camri", "important": [1], "margin": math.pi}, "0 <= margin < pi"),
        ({"name": "camri", "important": [1, 2], "margin": [0.1, 0.2, 0.3]}, "one per important class"),
        ({"name": "arcface", "scale": 0.0}, "scale must be > 0"),
        ({"name": "wce", "important": [1], "weight": 0.0}, "weight must be > 0"),
        ({"name": "crwwce", "important": [1], "fp_weight": -1.0}, "fp_weight must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        build_loss(name, 4, 3, **kwargs)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_feature_shape(name):
    head = build_loss(name, 4, 3, important=[1])
    with pytest.raises(ValueError, match=r"features must have shape \(N, 3\)"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="features must have shape"):
        head.logits(torch.randn(2, 3, 1))

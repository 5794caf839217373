"""camri.models: the paper CNN, and K independent copies of it stacked as one module (members)."""

import math

import pytest
import torch

from camri.models import LAYOUT, PaperCNN

K, WIDTH, Z = 3, 0.125, 8


@pytest.fixture(scope="module")
def stack():
    torch.manual_seed(0)
    return PaperCNN(in_channels=3, width=WIDTH, z_dim=Z, members=K)


def test_one_member_is_the_paper_network():
    torch.manual_seed(0)
    net = PaperCNN(in_channels=3, width=WIDTH, z_dim=Z)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [round(w * WIDTH) for w in LAYOUT if isinstance(w, int)]
    assert all(c.groups == 1 for c in convs) and len(convs) == 13
    assert net.embed.weight.shape == (Z, round(512 * WIDTH)) and net(torch.rand(5, 3, 32, 32)).shape == (5, Z)
    assert isinstance(net.embed, torch.nn.Linear)  # state_dict keys and kernel of a plain dense layer


def test_members_compute_exactly_what_separate_networks_compute(stack):
    stack.eval()
    x = torch.rand(4, K * 3, 32, 32)
    z = stack(x)
    assert z.shape == (4, K * Z)
    for k in range(K):
        single = stack.member(k).eval()
        torch.testing.assert_close(z[:, k * Z : (k + 1) * Z], single(x[:, 3 * k : 3 * (k + 1)]), rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match=f"member {K} of a stack of {K}"):
        stack.member(K)


def test_members_share_no_gradient(stack):
    stack.train()
    stack.zero_grad()
    z = stack(torch.rand(6, K * 3, 32, 32))
    z[:, Z : 2 * Z].square().sum().backward()  # a loss on member 1 only
    for name, p in stack.named_parameters():
        g = p.grad.reshape(K, p.shape[0] // K, *p.shape[1:])
        assert g[0].abs().max() == 0 and g[2].abs().max() == 0, name
        if "embed" in name:
            assert g[1].abs().max() > 0, name


def test_each_member_is_initialised_like_one_network(stack):
    first = stack.features[0]
    w = first.weight.reshape(K, -1, 3, 3, 3)
    bound = math.sqrt(6 / ((3 + w.shape[1]) * 9))  # Glorot-uniform of one member's 3x3 conv
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert not torch.equal(w[0], w[1])  # members start from different weights
    e = stack.embed.weight.reshape(K, Z, -1)
    assert abs(e.std().item() - math.sqrt(2 / e.shape[2])) < 0.4 * math.sqrt(2 / e.shape[2])  # He-normal
    with pytest.raises(ValueError, match="members"):
        PaperCNN(members=0)

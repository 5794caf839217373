"""The paper's CNN (authors' ``src/archs.py``, see ../shared/paper/SETUP.md) with a head from camri.losses.

Layers (3x3 'same' convolutions with ReLU; channel counts times ``width``):
    64, 64, BN, 64, maxpool, dropout 0.25 | 128, 128, BN, 128, maxpool, dropout 0.25 |
    256, 256, BN, 256, 256, 256, BN | 512, 512 | global average pooling |
    dense to z_dim (He-normal) + BatchNorm = the feature z | head.
SETUP.md calls it "11 convolutions" but its list, like the authors' archs.py, has 13; we build the list.
Keras defaults are kept where they change training: Glorot-uniform convolutions with zero bias, and
BatchNorm with momentum 0.99 / epsilon 1e-3 (PyTorch's momentum is 1 - Keras's: ``bn_momentum`` = 0.01).
Keras's slow running statistics lag a network that still changes fast: on a small data set (digits has
21 steps per epoch) evaluation is poor for tens of epochs, so the demo profile uses ``bn_momentum`` 0.1.
Two max-pools and a global average pool make any input of at least 4x4 pixels work (digits is 8x8).
"""

from __future__ import annotations

import torch
from torch import nn

from camri.losses import Head

# None = BatchNorm, "M" = max-pool + dropout 0.25; integers are convolution widths at width 1.0.
LAYOUT = (64, 64, None, 64, "M", 128, 128, None, 128, "M", 256, 256, None, 256, 256, 256, None, 512, 512)


def _batch_norm(kind, channels, momentum):
    return kind(channels, eps=1e-3, momentum=momentum)


class MemberLinear(nn.Linear):
    """``members`` independent dense layers side by side: (N, members·in) -> (N, members·out).

    Member k maps input features [k·in, (k+1)·in) to outputs [k·out, (k+1)·out). The weight is stored
    as (members·out, in): one member is exactly an nn.Linear (same parameters, state_dict keys and
    kernel), so single-network checkpoints and results do not depend on this class."""

    def __init__(self, in_features: int, out_features: int, members: int = 1):
        super().__init__(in_features, members * out_features)
        self.members, self.member_in, self.member_out = members, in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.members == 1:
            return super().forward(x)
        k, n = self.members, x.shape[0]
        w = self.weight.view(k, self.member_out, self.member_in)
        y = torch.einsum("nki,koi->nko", x.reshape(n, k, self.member_in), w)
        return y.reshape(n, -1) + self.bias


class PaperCNN(nn.Module):
    """Feature extractor of the paper: (N, members·C, H, W) float in [0, 1] -> (N, members·z_dim) feature z.

    ``members`` = K > 1 stacks K independent copies of the network in one module (for training K seeds of
    one configuration at once): every convolution is grouped (``groups=K``), and BatchNorm, ReLU, max-pool,
    dropout and global pooling act per channel, so member k sees only input channels [k·C, (k+1)·C) and
    owns output features [k·z_dim, (k+1)·z_dim); no parameter or gradient is shared. Each member is
    initialised like a single network (fans of its own slice). With K = 1 this is the paper's network.
    """

    def __init__(
        self, in_channels: int = 3, width: float = 1.0, z_dim: int = 512, bn_momentum: float = 0.01, members: int = 1
    ):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0 (1.0 is the paper's network); got {width}")
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1 (512 is the paper's, 2 for Fig. 3); got {z_dim}")
        if members < 1:
            raise ValueError(f"members must be >= 1 (1 = one network); got {members}")
        k = members
        layers: list[nn.Module] = []
        channels = in_channels
        for item in LAYOUT:
            if item is None:
                layers.append(_batch_norm(nn.BatchNorm2d, k * channels, bn_momentum))
            elif item == "M":
                layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
            else:
                out = max(1, round(item * width))
                conv = nn.Conv2d(k * channels, k * out, 3, padding=1, groups=k)
                for member in conv.weight.detach().view(k, out, channels, 3, 3):  # Keras glorot_uniform per member
                    nn.init.xavier_uniform_(member)
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU(inplace=True)]
                channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.embed = MemberLinear(channels, z_dim, members=k)
        for member in self.embed.weight.detach().view(k, z_dim, channels):
            nn.init.kaiming_normal_(member, nonlinearity="relu")  # Keras he_normal
        nn.init.zeros_(self.embed.bias)
        self.embed_bn = _batch_norm(nn.BatchNorm1d, k * z_dim, bn_momentum)
        self.z_dim = z_dim
        self.members = members
        self._args = dict(in_channels=in_channels, width=width, z_dim=z_dim, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_bn(self.embed(self.features(x)))

    def member(self, k: int) -> PaperCNN:
        """Member k as a network of its own (a copy of its weights and BatchNorm statistics)."""
        if not 0 <= k < self.members:
            raise IndexError(f"member {k} of a stack of {self.members}")
        single = PaperCNN(**self._args)
        # Every parameter and buffer is laid out member-major along its first dimension (see __init__).
        single.load_state_dict(
            {
                name: t if t.ndim == 0 else t.reshape(self.members, t.shape[0] // self.members, *t.shape[1:])[k]
                for name, t in self.state_dict().items()
            }
        )
        return single.to(next(self.parameters()).device)


class Classifier(nn.Module):
    """Backbone + head. ``forward(x)`` returns features z; the head computes loss, logits, cosines."""

    def __init__(self, backbone: PaperCNN, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

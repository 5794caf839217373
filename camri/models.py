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


class PaperCNN(nn.Module):
    """Feature extractor of the paper: (N, C, H, W) float in [0, 1] -> (N, z_dim) feature z."""

    def __init__(self, in_channels: int = 3, width: float = 1.0, z_dim: int = 512, bn_momentum: float = 0.01):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0 (1.0 is the paper's network); got {width}")
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1 (512 is the paper's, 2 for Fig. 3); got {z_dim}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in LAYOUT:
            if item is None:
                layers.append(_batch_norm(nn.BatchNorm2d, channels, bn_momentum))
            elif item == "M":
                layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
            else:
                out = max(1, round(item * width))
                conv = nn.Conv2d(channels, out, 3, padding=1)
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU(inplace=True)]
                channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.embed = nn.Linear(channels, z_dim)
        nn.init.kaiming_normal_(self.embed.weight, nonlinearity="relu")  # Keras he_normal
        nn.init.zeros_(self.embed.bias)
        self.embed_bn = _batch_norm(nn.BatchNorm1d, z_dim, bn_momentum)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_bn(self.embed(self.features(x)))


class Classifier(nn.Module):
    """Backbone + head. ``forward(x)`` returns features z; the head computes loss, logits, cosines."""

    def __init__(self, backbone: PaperCNN, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

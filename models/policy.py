"""The policy network: a spatial branch and a temporal branch on the glance features (App. H.1).

* ``SpatialPolicy`` reads the (detached) glance feature maps of all T_G glance frames with 3-D
  convolutions and emits one deformable patch per glance frame: ``(a_y, a_x, a_h, a_w)`` in (0, 1)
  (vertical and horizontal position, height and width; see ``models.patches``), and, with a patch
  transformation set (``models.patch_transforms``), the transformation's parameters from a head of their own.
* ``TemporalPolicy`` reads the pooled glance features with temporal convolutions and scores every
  glance frame; a softmax of the scores gives the frame weights.

Layer indices follow the official modules (official ``spatial_policy.encoder.N`` and
``temporal_policy.Tconv.N`` are our ``spatial.layers.N`` and ``temporal.layers.N``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

#: The official training forward runs the spatial policy twice on the same input, so each of its
#: BatchNorm layers folds the same batch statistics into its running averages twice per step:
#: ``r <- 0.9 (0.9 r + 0.1 x) + 0.1 x = 0.81 r + 0.19 x``. Running it once with momentum 0.19 gives
#: identical running statistics at half the cost.
SPATIAL_POLICY_BN_MOMENTUM = 1.0 - (1.0 - 0.1) ** 2


class SpatialPolicy(nn.Module):
    """Glance feature maps (B, T_G, C, h, w) -> patch actions (B, T_G - k + 1, 4) in (0, 1).

    Conv3d 1x1x1 (C -> hidden), two Conv3d 3x3x3 (hidden -> hidden), each with BN and ReLU, then a
    Conv3d with kernel (k, h, w) to 4 outputs and a sigmoid. No biases (as official). ``temporal_kernel``
    k = 1 gives one patch per glance frame (the main variant); k = T_G one patch per video (TSM).

    ``transform_params`` > 0 (a patch transformation's parameter count m, ``models.patch_transforms``):
    ``transform_head``, a Conv3d of the same kernel from the last hidden layer to m raw outputs (with a
    bias), starts at zero weights and bias, so that its first output is the identity transformation;
    the actions are then (B, T_G - k + 1, 4 + m), the box terms first.
    """

    def __init__(self, in_channels: int = 1280, hidden_dim: int = 128, feature_size: int = 7,
                 bn_momentum: float = SPATIAL_POLICY_BN_MOMENTUM, temporal_kernel: int = 1,
                 transform_params: int = 0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv3d(in_channels, hidden_dim, kernel_size=1, bias=False),
            nn.BatchNorm3d(hidden_dim, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden_dim, hidden_dim, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(hidden_dim, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden_dim, hidden_dim, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(hidden_dim, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden_dim, 4, kernel_size=(temporal_kernel, feature_size, feature_size), bias=False),
            nn.Sigmoid(),
        )
        self.transform_head = None
        if transform_params:
            self.transform_head = nn.Conv3d(hidden_dim, transform_params,
                                            kernel_size=(temporal_kernel, feature_size, feature_size))
            nn.init.zeros_(self.transform_head.weight)
            nn.init.zeros_(self.transform_head.bias)

    def forward(self, feature_maps: torch.Tensor) -> torch.Tensor:
        x = feature_maps.permute(0, 2, 1, 3, 4)  # (B, C, T_G, h, w)
        if self.transform_head is None:
            x = self.layers(x)  # (B, 4, T_G - k + 1, 1, 1)
            return x.reshape(x.shape[0], 4, -1).transpose(1, 2)  # (B, T_G - k + 1, 4)
        hidden = self.layers[:-2](x)  # (B, hidden, T_G, h, w)
        x = torch.cat((self.layers[-2:](hidden), self.transform_head(hidden)), dim=1)  # (B, 4 + m, T_G - k + 1, 1, 1)
        return x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # (B, T_G - k + 1, 4 + m)


class TemporalPolicy(nn.Module):
    """Pooled glance features (B, T_G, C) -> frame scores (B, T_G) (softmax them for weights).

    Two temporal convolutions (kernel 3 over frames) with BN and ReLU, then a 1x1 convolution to one
    score per frame. No biases (as official).
    """

    def __init__(self, in_channels: int = 1280, hidden_dim: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=(3, 1), padding=(1, 0), bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=(3, 1), padding=(1, 0), bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, 1, kernel_size=1, bias=False),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2).unsqueeze(-1)  # (B, C, T_G, 1)
        return self.layers(x).flatten(1)  # (B, T_G)


class Policy(nn.Module):
    """The two branches of the policy network, trained together with LR multipliers of their own."""

    def __init__(self, in_channels: int, stn_hidden_dim: int, temporal_hidden_dim: int, feature_size: int,
                 transform_params: int = 0):
        super().__init__()
        self.spatial = SpatialPolicy(in_channels, stn_hidden_dim, feature_size, transform_params=transform_params)
        self.temporal = TemporalPolicy(in_channels, temporal_hidden_dim)

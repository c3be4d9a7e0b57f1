"""FrameExit-style classifier with one exit per step (paper §4.3, App. H.1).

Every glance frame and every focus patch is embedded by an MLP (Linear, BN, ReLU) to ``hidden_dim``
features. Features are accumulated by a running element-wise maximum over steps, and step ``t`` has
its own linear head on the accumulated features, so a prediction exists after every step:

* glance exit ``t`` (t < T_G) classifies ``m_G[t] = max(z_G[0..t])``;
* focus exit ``t`` (t < T_L) classifies ``concat(m_L[t], m_G[T_G - 1])``: the focus exits see the
  final glance state.

Because the state is a running maximum, a video that stops after ``t`` focus steps gets exactly the
logits of exit ``t`` of the full pass; the adaptive runtime relies on this.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ExitMLP(nn.Module):
    """Per-step embedding: (B, T, in_dim) -> (B, T, hidden_dim), BatchNorm over all B*T steps."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return self.layers(x.reshape(b * t, d)).view(b, t, -1)


def _heads(count: int, in_dim: int, num_classes: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes)) for _ in range(count))


class ExitClassifier(nn.Module):
    """(glance features (B, T_G, Dg), focus features (B, T_L, Df)) -> exit logits (B, T_G + T_L, C).

    Rows per video: glance exits 0..T_G-1, then focus exits 0..T_L-1; the last row is the prediction.
    """

    def __init__(self, glance_dim: int, focus_dim: int, num_glance: int, num_focus: int,
                 num_classes: int, hidden_dim: int = 4096, dropout: float = 0.2):
        super().__init__()
        self.num_glance, self.num_focus = num_glance, num_focus
        self.glance_mlp = ExitMLP(glance_dim, hidden_dim)
        self.focus_mlp = ExitMLP(focus_dim, hidden_dim)
        self.glance_exits = _heads(num_glance, hidden_dim, num_classes, dropout)
        self.focus_exits = _heads(num_focus, 2 * hidden_dim, num_classes, dropout)

    def glance_states(self, glance_features: torch.Tensor) -> torch.Tensor:
        """(B, T_G, Dg) -> running-max states (B, T_G, hidden)."""
        return torch.cummax(self.glance_mlp(glance_features), dim=1).values

    def focus_states(self, focus_features: torch.Tensor, previous=None) -> torch.Tensor:
        """(B, T, Df) -> running-max states (B, T, hidden), continuing from ``previous`` (B, hidden)."""
        z = self.focus_mlp(focus_features)
        if previous is not None:
            z = torch.cat((previous.unsqueeze(1), z), dim=1)
            return torch.cummax(z, dim=1).values[:, 1:]
        return torch.cummax(z, dim=1).values

    def glance_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Glance exits on states (B, T_G, hidden) -> (B, T_G, C)."""
        return torch.stack([head(states[:, t]) for t, head in enumerate(self.glance_exits)], dim=1)

    def focus_logits(self, states: torch.Tensor, glance_final: torch.Tensor, first_step: int = 0) -> torch.Tensor:
        """Focus exits ``first_step ..`` on states (B, T, hidden) and the final glance state (B, hidden)."""
        steps = range(first_step, first_step + states.shape[1])
        return torch.stack([self.focus_exits[s](torch.cat((states[:, i], glance_final), dim=1))
                            for i, s in enumerate(steps)], dim=1)

    def forward(self, glance_features: torch.Tensor, focus_features: torch.Tensor) -> torch.Tensor:
        m_glance = self.glance_states(glance_features)  # (B, T_G, H)
        m_focus = self.focus_states(focus_features)  # (B, T_L, H)
        return torch.cat((self.glance_logits(m_glance),
                          self.focus_logits(m_focus, m_glance[:, -1])), dim=1)  # (B, T_G + T_L, C)

"""The PyTorch MLP shared by the trainer and the loader; a bundle stores its config and state_dict.

Only the loader's pytorch branch and the torch trainer import this module, so serving a scikit-learn
or XGBoost model never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

ARCHITECTURE_TYPE = "TabularMLP"


class TabularMLP(nn.Module):
    """Linear -> ReLU -> Dropout per hidden layer, then a linear output (logits or a scaled value)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], output_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def architecture(
    *, input_dim: int, hidden: Sequence[int], output_dim: int, dropout: float, target_mean: float, target_std: float
) -> dict[str, Any]:
    """The JSON config a bundle stores; regression targets are standardised, so their scale travels too."""
    return {
        "type": ARCHITECTURE_TYPE,
        "input_dim": int(input_dim),
        "hidden": [int(size) for size in hidden],
        "output_dim": int(output_dim),
        "dropout": float(dropout),
        "target_mean": float(target_mean),
        "target_std": float(target_std),
    }


def build_mlp(arch: Mapping[str, Any]) -> TabularMLP:
    """Rebuild the module from its config; ValueError when the config is not one we wrote."""
    if arch.get("type") != ARCHITECTURE_TYPE:
        raise ValueError(f"unknown architecture type {arch.get('type')!r}")
    dims = [arch.get("input_dim"), arch.get("output_dim"), *(arch.get("hidden") or [])]
    if not all(isinstance(d, int) and 0 < d <= 1_000_000 for d in dims) or not isinstance(arch.get("hidden"), list):
        raise ValueError("architecture dimensions must be positive integers")
    dropout = arch.get("dropout", 0.0)
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError("architecture dropout must be in [0, 1)")
    return TabularMLP(arch["input_dim"], arch["hidden"], arch["output_dim"], float(dropout))

"""Property heads: molecular properties regressed from the 3D encoder and from the Q-Former's queries.

`PropertyHead` reads the encoder's atom states ([CLS] state and the mean over atoms) and is what
`molm3d predict` answers with. `QueryPropertyHead` reads the 8 query outputs: stage 1 trains it beside
the contrastive, matching and captioning losses so that the molecule tokens the LM sees carry the
properties too. Both predict standardised targets (z = (t - mean) / std, with t = log1p(value) for
heavy-tailed targets). The statistics come from the training split and live in the config (so in
each checkpoint's config.json), in float64: as buffers they would be cast to bf16 with the model on a
GPU, and bf16 rounds a HOMO mean of -6.59 eV by up to 0.02 eV.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..targets import DEFAULT_TARGETS, TARGETS


@dataclass
class PropertyHeadConfig:
    targets: tuple[str, ...] = DEFAULT_TARGETS  # names in molm3d_core.targets.TARGETS; () = no heads
    hidden_size: int = 256
    # Standardisation of each target (of log1p(value) for `Target.log` ones), from the training split.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown property targets {unknown}; known: {', '.join(TARGETS)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.targets):
                raise ValueError(f"property head {name} has {len(value)} values for {len(self.targets)} targets")
            if value is not None:
                setattr(self, name, tuple(float(v) for v in value))


class PropertyHead(nn.Module):
    """Encoder atom states (B, L, D) -> standardised targets (B, T)."""

    def __init__(self, config: PropertyHeadConfig, input_dim: int) -> None:
        super().__init__()
        self.config = config
        n = len(config.targets)
        self.dense = nn.Linear(2 * input_dim, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, n)

    @property
    def targets(self) -> tuple[str, ...]:
        return self.config.targets

    @property
    def trained(self) -> bool:
        """Whether the statistics were set (by stage 0): without them the outputs mean nothing."""
        return self.config.mean is not None

    def forward(self, atoms: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """atoms (B, L, D) with [CLS] first; padding_mask (B, L) True at padding."""
        real = (~padding_mask).unsqueeze(-1).to(atoms.dtype)
        real[:, 0] = 0  # [CLS] enters on its own
        mean = (atoms * real).sum(1) / real.sum(1).clamp(min=1)
        x = torch.cat([atoms[:, 0], mean], dim=-1)
        return self.out_proj(self.layer_norm(F.gelu(self.dense(x))))

    # standardisation ------------------------------------------------------------------------------

    def set_statistics(self, values: torch.Tensor, present: torch.Tensor) -> None:
        """Mean and std of each target over the rows where it is present ((N, T) values in units)."""
        t = self._transform(values.double())
        mean, std = [], []
        for j in range(t.shape[1]):
            col = t[present[:, j], j]
            mean.append(float(col.mean()) if len(col) else 0.0)
            std.append(max(float(col.std()), 1e-6) if len(col) > 1 else 1.0)
        self.config.mean, self.config.std = tuple(mean), tuple(std)

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        """(..., T) values in units -> standardised (float32)."""
        mean, std = self._statistics(values.device)
        return ((self._transform(values.double()) - mean) / std).float()

    def to_units(self, z: torch.Tensor) -> torch.Tensor:
        """(..., T) standardised -> values in units (float64), >= 0 for the non-negative targets."""
        mean, std = self._statistics(z.device)
        t = z.double() * std + mean
        values = torch.where(self._flag("log", z.device), torch.expm1(t), t)
        return torch.where(self._flag("nonnegative", z.device), values.clamp(min=0), values)

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.mean is None or self.config.std is None:
            raise ValueError("the property head has no target statistics: it was never trained (stage 0 sets them)")
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64, device=device)  # noqa: E731
        return as_tensor(self.config.mean), as_tensor(self.config.std)

    def _flag(self, name: str, device: torch.device) -> torch.Tensor:
        """(T,) bool: the `Target` field `name` (log, nonnegative) of each target."""
        return torch.tensor([getattr(TARGETS[t], name) for t in self.targets], dtype=torch.bool, device=device)

    def _transform(self, values: torch.Tensor) -> torch.Tensor:
        return torch.where(self._flag("log", values.device), torch.log1p(values.clamp(min=0)), values)


class QueryPropertyHead(nn.Module):
    """Query outputs (B, Q, H) -> standardised targets (B, T): one linear map over all Q queries.

    Linear on purpose: what it can read, the LM can read through a linear projector too, so stage 1
    puts the properties into the molecule tokens in a form the LM's read-out does not have to undo.
    """

    def __init__(self, config: PropertyHeadConfig, num_queries: int, query_dim: int) -> None:
        super().__init__()
        self.out_proj = nn.Linear(num_queries * query_dim, len(config.targets))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return self.out_proj(queries.flatten(1))


def regression_loss(
    z_pred: torch.Tensor, z_true: torch.Tensor, present: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean smooth-L1 over the present targets ((B, T) standardised; `weights` (T,) per target).

    beta = 0.1 std: L1 for errors above a tenth of a standard deviation, so the loss follows the MAE
    the heads are judged by, and quadratic below it, so the gradient does not flip-flop at zero.
    """
    err = F.smooth_l1_loss(z_pred.float(), z_true.float().nan_to_num(0.0), reduction="none", beta=0.1)
    mask = present.to(err.dtype)
    if weights is not None:
        mask = mask * weights.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp(min=1)

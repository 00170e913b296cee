"""Training stages 0-3 of 3D-MoLM: one loop, one objective per stage, one config dataclass."""

from .config import STAGES, StageResult, TrainConfig
from .data import TaskMixture, TrainingData
from .loop import train_stage
from .objectives import build_objective

__all__ = ["STAGES", "StageResult", "TaskMixture", "TrainConfig", "TrainingData", "build_objective", "train_stage"]

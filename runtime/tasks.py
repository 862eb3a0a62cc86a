"""What a restoration model is for: the task, its degradation parameters and its standard data sets.

Stored in checkpoints' training configs and in model cards; shared by training, evaluation and validation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import UserError

TASKS = ("sr", "denoise", "jpeg")

# Published evaluation sets and training sets per task (see ../shared/data/README.md).
EVAL_SETS = {"sr": ("set5", "set14", "bsd100"), "denoise": ("set12", "bsd68"), "jpeg": ("live1", "classic5")}
COLOR_EVAL_SETS = {"denoise": ("cbsd68",)}
TRAIN_SETS = {"sr": "sr291", "denoise": "denoise400", "jpeg": "jpeg291"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    scale: int = 1
    noise: float = 0.0  # sigma of additive white Gaussian noise on the 0..255 scale
    quality: int = 0  # JPEG quality
    channels: int = 3  # 1: gray model, 3: RGB model

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise UserError(f"unknown task {self.name!r}; one of {', '.join(TASKS)}")
        if self.name == "sr" and self.scale < 2:
            raise UserError("super-resolution needs --scale >= 2")
        if self.name != "sr" and self.scale != 1:
            raise UserError(f"{self.name} models have scale 1, got {self.scale}")
        if self.name == "denoise" and not self.noise > 0:
            raise UserError("denoising needs --noise SIGMA > 0 (0..255 scale)")
        if self.name == "jpeg" and not 1 <= self.quality <= 100:
            raise UserError("JPEG deblocking needs --quality 1..100")
        if self.channels not in (1, 3):
            raise UserError(f"channels must be 1 or 3, got {self.channels}")

    @property
    def shave(self) -> int:
        """Border excluded from PSNR/SSIM: `scale` pixels for SR, none otherwise (published conventions)."""
        return self.scale if self.name == "sr" else 0

    @property
    def label(self) -> str:
        if self.name == "sr":
            return f"sr x{self.scale}"
        if self.name == "denoise":
            return f"denoise sigma {self.noise:g}" + (" gray" if self.channels == 1 else " color")
        return f"jpeg q{self.quality}" + (" gray" if self.channels == 1 else " color")

    @property
    def train_set(self) -> str:
        return TRAIN_SETS[self.name]

    @property
    def eval_sets(self) -> tuple[str, ...]:
        if self.channels == 3 and self.name in COLOR_EVAL_SETS:
            return COLOR_EVAL_SETS[self.name]
        return EVAL_SETS[self.name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskSpec":
        return cls(**data)

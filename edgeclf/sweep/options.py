"""The sweep's settings (saved in the sweep folder; ``--resume`` reads them back)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError

SETTINGS = "sweep_settings.json"
BUDGET_FIELDS = ("max_latency", "max_size", "max_ram")


@dataclass
class SweepOptions:
    data: str = ""
    models: list[str] = field(default_factory=lambda: ["mobilenet_v2", "mobilenet_v2_035"])
    sizes: list[int] = field(default_factory=lambda: [96, 128, 160, 224])
    project: str = "runs/sweep"
    name: str = "exp"
    remotes: list[str] = field(default_factory=list)  # bench devices over SSH, as `edgeclf bench --remote`
    max_latency: float | None = None  # ms; judged on the upper end of the p50's 95 % confidence interval
    max_size: float | None = None  # MB of the model file
    max_ram: float | None = None  # MiB, peak resident memory of the bench process with the model loaded
    epochs: int | None = None  # None: edgeclf train's defaults
    fine_tune_epochs: int | None = None
    weights: str | None = None
    formats: str | None = None  # export --formats (None: every format)
    max_drop: float | None = None  # export --max-drop (None: export's default)
    runs: int | None = None  # bench --runs / --warmup / --max-images (None: bench's defaults)
    warmup: int | None = None
    max_images: int | None = None
    train_args: list[str] = field(default_factory=list)  # anything else, passed as it is
    export_args: list[str] = field(default_factory=list)
    bench_args: list[str] = field(default_factory=list)
    remote_bench_args: list[str] | None = None  # the --remote devices' bench options (None: as here)

    def candidates(self) -> list[tuple[str, int]]:
        return [(m, s) for m in self.models for s in self.sizes]

    def budget(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in BUDGET_FIELDS if getattr(self, k) is not None}

    def save(self, folder: Path) -> Path:
        return fsutil.write_json(folder / SETTINGS, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> "SweepOptions":
        try:
            d = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EdgeclfError(f"{folder}: not a sweep folder (no readable {SETTINGS})") from exc
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def parse_list(text: str, what: str, cast=str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise EdgeclfError(f"{what}: give at least one value (comma-separated)")
    try:
        out = [cast(t) for t in items]
    except ValueError as exc:
        raise EdgeclfError(f"{what} {text}: {exc}") from exc
    return list(dict.fromkeys(out))

"""What a bench is asked (:class:`BenchOptions`) and what it measures (:class:`BenchRow`, one per artifact x
backend x thread count x device; :class:`BenchResult`, the whole bench). Shared by :mod:`edgeclf.bench.core`,
which fills them, and :mod:`edgeclf.bench.compare` and :mod:`edgeclf.bench.report`, which read them."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from edgeclf.bench.valset import ExportInfo
from edgeclf.status import Status

DEFAULT_PROJECT = Path("runs/bench")  # --out default: runs/bench/exp, exp2, ...
DEFAULT_LOG = DEFAULT_PROJECT / "bench_log.jsonl"  # one JSON line appended per bench run
LOCAL = "local"  # the device name of the machine bench runs on
EXIT_OK = 0
EXIT_BELOW = 3  # an artifact below --min-top1 (or failed, when --min-top1 is given)


@dataclass
class BenchOptions:
    exports: list[str | Path]
    data: str | Path
    out: str | Path | None = None  # default: runs/bench/exp (exp2, exp3 ... when taken)
    runs: int = 100
    warmup: int = 10
    threads: list[int] | None = None  # None: every core the device lets this process use
    backends: list[str] | None = None  # None: every installed backend that applies
    min_top1: float | None = None  # fraction 0..1
    log: str | Path | None = DEFAULT_LOG  # None: no log line
    command: str = ""  # the command line, recorded in the outputs
    job_timeout: float = 1800.0  # seconds per worker process
    remotes: list[str] = field(default_factory=list)  # [user@]host[:port], one device each
    remote_python: str = "python3"  # the interpreter with edgeclf[runtime] on the devices
    local: bool = True  # measure on this machine too
    ssh_options: list[str] = field(default_factory=list)  # extra `ssh -o` options
    ssh_config: str | None = None  # `ssh -F FILE`
    max_images: int | None = None  # a stratified, seeded subset of the validation split (None: all)
    decode_on: str = "host"  # "device": remote devices also decode the photos themselves (a second top-1)
    formats: list[str] | None = None  # only these artifacts (e.g. tflite-int8), None: every one


def _internal(**kw):
    return field(repr=False, compare=False, metadata={"internal": True}, **kw)


@dataclass
class BenchRow:
    """One artifact x backend x thread count on one device. None: not measured (failed, or no accuracy)."""

    device: str
    model: str
    export_dir: str
    backbone: str | None
    imgsz: int
    format: str
    precision: str
    file: str
    backend: str
    threads: int
    size_bytes: int
    val_images: int
    runs: int
    warmup: int
    status: Status = Status.OK
    note: str = ""
    engine: str = ""
    recipe: str = ""  # int8: how export quantized it (edgeclf.json's recipe, one line)
    top1: float | None = None
    top5: float | None = None
    macro_f1: float | None = None
    per_class: dict | None = None
    drop_pt: float | None = None  # the float reference's top-1 minus this, points
    agreement: float | None = None
    mcnemar_p: float | None = None  # exact McNemar test against the float reference
    only_reference_right: int | None = None
    only_model_right: int | None = None
    worst_class: str | None = None  # the class whose recall drops most against the reference
    worst_class_drop_pt: float | None = None
    export_top1: float | None = None
    export_val_images: int | None = None
    export_diff_pt: float | None = None
    import_ms: float | None = None
    load_ms: float | None = None
    cold_start_ms: float | None = None  # load plus the first real image's inference
    mean_ms: float | None = None
    p50_ms: float | None = None
    p50_ci_low_ms: float | None = None  # 95 % confidence interval of the median
    p50_ci_high_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    fps: float | None = None
    rss_peak_mib: float | None = None
    rss_baseline_mib: float | None = None
    rss_model_mib: float | None = None
    emulated: bool = False  # measured on an emulated device: its latency and memory are not the device's
    val_total: int | None = None  # images in the validation split (val_images of them measured)
    device_decode_top1: float | None = None  # --decode-on device: top-1 on the photos the device decoded
    device_decode_changed: int | None = None  # images whose top-1 class changes with the device's decoding
    # against the same artifact and backend on the first device (this machine unless --no-local): answers that
    # differ, and images it gets right where the first device does not (gained) or the reverse (lost)
    vs_first_changed: int | None = None
    vs_first_lost: int | None = None
    vs_first_gained: int | None = None
    export: ExportInfo | None = _internal(default=None)
    key: tuple = _internal(default=())  # (device, export index, artifact, backend): one accuracy pass each

    @property
    def size_mb(self) -> float:
        return round(self.size_bytes / 1e6, 3)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict:
        """The public fields (what bench.csv/json hold), status as its string."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("internal")}
        d["status"] = str(self.status)
        d["size_mb"] = self.size_mb
        return d


@dataclass
class BenchResult:
    out_dir: Path
    rows: list[BenchRow]
    exports: list[ExportInfo]
    machine: dict  # the machine bench ran on (its fingerprint)
    settings: dict
    files: dict[str, Path]
    devices: dict[str, dict] = field(default_factory=dict)  # device name -> fingerprint (+ how it was reached)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_BELOW if any(not r.ok for r in self.rows) and self.settings.get("min_top1") is not None \
            else EXIT_OK

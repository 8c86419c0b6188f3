"""The status of one result row, shared by export (per artifact) and bench (per artifact x backend)."""
from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    OK = "ok"
    DROP = "drop"  # verified, but lost more than the accuracy budget (export) -- a warning
    FAILED = "failed"  # could not be converted, loaded or run, or collapsed
    BELOW_FLOOR = "below --min-top1"  # bench's CI gate

    def __str__(self) -> str:  # what tables and CSV files show
        return self.value

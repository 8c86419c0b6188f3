"""The sweep's judgement on its own (fast tier): the front, the choice under a budget judged on the upper end of
the p50's interval, the closest when nothing meets it, emulated devices' latency taken from this machine, and
the stage commands a resume issues. The end-to-end sweep is tests/test_sweep.py."""
from __future__ import annotations

import json
from pathlib import Path

from edgeclf.sweep import judge
from edgeclf.sweep.options import SweepOptions
from edgeclf.sweep.runner import Candidate, stage_command


def _row(cand, fmt, top1, p50, hi, size=1.0, device="local", **kw):
    return {"candidate": cand, "format": fmt, "backend": "litert", "device": device, "status": "ok", "top1": top1,
            "p50_ms": p50, "p50_hi_ms": hi, "size_mb": size, "ram_mib": 50.0, **kw}


def test_front_is_the_rows_nothing_beats_on_both():
    rows = [_row("a", "int8", 0.90, 1.0, 1.1), _row("b", "int8", 0.92, 2.0, 2.1), _row("c", "fp32", 0.91, 3.0, 3.1),
            _row("d", "fp32", 0.92, 2.0, 2.2), _row("e", "x", 0.95, 9.0, 9.5, device="pi")]
    judge.mark_front(rows)
    assert [r["pareto"] for r in rows] == [True, True, False, True, True]  # c: b is better and faster; b, d tie


def test_choice_judges_latency_on_the_upper_end_of_the_interval():
    rows = [_row("fast", "int8", 0.90, 1.0, 1.2), _row("edge", "int8", 0.93, 1.9, 2.3),
            _row("slow", "fp32", 0.95, 4.0, 4.5)]
    ch = judge.choose(rows, "local", {"max_latency": 2.0})
    assert ch.row["candidate"] == "fast"  # "edge" has p50 1.9 under 2.0, but its interval reaches 2.3
    assert judge.choose(rows, "local", {"max_latency": 2.5}).row["candidate"] == "edge"
    assert judge.choose(rows, "local", {}).row["candidate"] == "slow"
    assert judge.choose(rows, "local", {"max_latency": 5, "max_size": 0.5}).row is None


def test_nothing_meets_the_budget_names_the_closest_and_by_how_much():
    rows = [_row("a", "int8", 0.90, 1.0, 1.5), _row("b", "fp32", 0.95, 3.0, 3.3)]
    ch = judge.choose(rows, "local", {"max_latency": 1.0})
    assert ch.row is None and ch.closest["candidate"] == "a"
    assert "p50 upper 1.50 ms against 1 ms (+0.50 ms, 50% over)" == ch.over


def test_emulated_rows_take_accuracy_there_and_latency_here(tmp_path):
    c = Candidate("mobilenet_v2_035", 96, tmp_path)
    (c.bench).mkdir(parents=True)
    (c.bench_remote).mkdir(parents=True)
    common = {"format": "tflite-int8", "backend": "litert", "status": "ok", "size_mb": 0.6}
    (c.bench / "bench.json").write_text(json.dumps({"rows": [
        {**common, "device": "local", "emulated": False, "top1": 0.80, "p50_ms": 0.5, "p50_ci_high_ms": 0.6,
         "rss_peak_mib": 60}]}))
    (c.bench_remote / "bench.json").write_text(json.dumps({"rows": [
        {**common, "device": "pi", "emulated": True, "top1": 0.78, "p50_ms": 40.0, "p50_ci_high_ms": 41.0,
         "rss_peak_mib": 900}]}))
    rows = judge.collect([c], {"candidates": {}})
    pi = next(r for r in rows if r["device"] == "pi")
    assert (pi["top1"], pi["p50_ms"], pi["p50_hi_ms"], pi["ram_mib"], pi["latency_from"]) == (0.78, 0.5, 0.6, 60,
                                                                                              "local")
    assert judge.targets(rows, ["pi"]) == ["pi"] and judge.targets(rows, []) == ["local"]


def test_a_candidate_without_its_bench_is_a_failed_row_with_the_reason(tmp_path):
    c = Candidate("efficientnet_b0", 96, tmp_path)
    rows = judge.collect([c], {"candidates": {c.name: {"error": "ImageNet weights not found"}}})
    assert [(r["status"], r["reason"]) for r in rows] == [("failed", "ImageNet weights not found")]


def test_resume_commands(tmp_path):
    opts = SweepOptions(data="/d", train_args=["--holdout", "0.2"], remotes=["pi"],
                        remote_bench_args=["--max-images", "50"], runs=7)
    c = Candidate("mobilenet_v2_035", 96, tmp_path)
    fresh = stage_command("train", c, opts)
    assert fresh[:2] == ["train", "/d"] and "--split-from" in fresh and fresh[-2:] == ["--holdout", "0.2"]
    (c.run).mkdir(parents=True)
    for name in ("args.yaml", "split.json"):
        (c.run / name).write_text("{}")
    assert stage_command("train", c, opts) == ["train", "--resume", str(c.run)]
    local, remote = stage_command("bench", c, opts), stage_command("remote", c, opts)
    assert "--remote" not in local and local[local.index("--runs") + 1] == "7"
    assert remote[-2:] == ["--max-images", "50"] and "--no-local" in remote and "--runs" not in remote
    assert not c.finished("train") and not c.finished("export")
    (c.run / "state.json").write_text(json.dumps({"done": True}))
    assert c.finished("train")
    export = stage_command("export", c, opts)
    assert Path(export[export.index("--out") + 1]) == c.export and "--int8" in export

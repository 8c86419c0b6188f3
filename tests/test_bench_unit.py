"""Fast tier: bench's pure parts on inputs whose answer is known.

Statistics (median confidence interval, exact McNemar, worst class), option parsing, the device
fingerprint on sample /proc/cpuinfo texts (x86 with and without VNNI, a Raspberry Pi 4 and a Pi 5),
the --remote host syntax, preflight's decisions and one-line errors, which backends a device gets, and
the report writers on synthetic rows. No model is loaded and no process is started.
"""
from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgeclf import stats
from edgeclf.bench import core, fingerprint, remote, report
from edgeclf.contract import SCHEMA, Artifact, Bundle, InputSpec, TensorSpec
from edgeclf.errors import EdgeclfError
from edgeclf.status import Status


# --- statistics --------------------------------------------------------------------------------------

def test_median_ci_is_the_order_statistics_of_the_binomial_table():
    # Textbook ranks of the 95 % distribution-free interval of a median: n=20 -> x(6)..x(15),
    # n=100 -> x(40)..x(61); below n=6 no interval reaches 95 %.
    assert stats.median_ci_ranks(20) == (6, 15)
    assert stats.median_ci_ranks(100) == (40, 61)
    assert stats.median_ci_ranks(6) == (1, 6)
    assert stats.median_ci_ranks(5) is None
    assert stats.median_ci_ranks(10_000) == (4902, 5099)  # the normal approximation: 5000 ± 1.96 * 50
    sample = list(range(1, 101))  # 1..100 ms, in any order
    random.Random(0).shuffle(sample)
    assert stats.median_ci(sample) == (40.0, 61.0)
    assert stats.median_ci([3.0, 1.0, 2.0]) is None


def test_binomial_tail_exact():
    assert stats.binom_cdf(0, 10) == 1 / 1024
    assert stats.binom_cdf(1, 7) == 8 / 128
    assert stats.binom_cdf(-1, 7) == 0.0 and stats.binom_cdf(7, 7) == 1.0
    assert stats.binom_cdf(50, 100) == pytest.approx(0.5397946186935895, rel=1e-12)


def test_latency_summary_of_a_fixed_sample():
    times = [10.0] * 45 + [11.0] * 10 + [12.0] * 40 + [50.0] * 5  # 100 runs, a slow tail
    lat = stats.latency_summary(times)
    assert lat.samples == 100
    assert lat.mean_ms == pytest.approx((450 + 110 + 480 + 250) / 100)
    assert lat.p50_ms == 11.0 and (lat.p50_ci_low_ms, lat.p50_ci_high_ms) == (10.0, 12.0)
    assert lat.min_ms == 10.0 and lat.max_ms == 50.0 and lat.p99_ms == 50.0
    assert lat.p90_ms == 12.0
    assert lat.fps == pytest.approx(1000 / lat.mean_ms)
    assert lat.std_ms == pytest.approx(float(np.std(times)))
    with pytest.raises(ValueError):
        stats.latency_summary([])


def test_mcnemar_exact_on_known_vectors():
    labels = np.ones(10, dtype=int)
    # the model gets images 1..6 right where the reference is wrong (c = 6), the reference image 9 (b = 1)
    ref = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    model = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    test = stats.mcnemar_exact(model, ref, labels)
    assert (test.only_reference_right, test.only_model_right, test.discordant) == (1, 6, 7)
    assert test.p_value == 0.125  # 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * 8/128
    assert stats.mcnemar_exact(ref, model, labels).p_value == 0.125  # symmetric
    # ten images only the reference gets right: p = 2 / 2**10, significant
    assert stats.mcnemar_exact(np.zeros(10, int), labels, labels).p_value == 2 / 1024
    same = stats.mcnemar_exact(ref, ref, labels)
    assert same.p_value == 1.0 and same.discordant == 0
    # a balanced disagreement is no evidence at all
    assert stats.mcnemar_exact([1, 0], [0, 1], [1, 1]).p_value == 1.0


def test_worst_class_drop():
    ref = {"ants": {"recall": 0.9, "support": 70}, "bees": {"recall": 0.8, "support": 83},
           "wasps": {"recall": 0.5, "support": 0}}
    model = {"ants": {"recall": 0.92, "support": 70}, "bees": {"recall": 0.7518, "support": 83},
             "wasps": {"recall": 0.0, "support": 0}}
    assert stats.worst_class_drop(model, ref) == ("bees", 4.82)
    assert stats.worst_class_drop({"a": {"recall": 1.0, "support": 0}}, {"a": {"recall": 1.0}}) is None


# --- options -----------------------------------------------------------------------------------------

def test_parse_threads_and_backends():
    assert core.parse_threads("1,2,4") == [1, 2, 4]
    assert core.parse_threads(" 2, 2 ,1") == [2, 1]
    assert core.parse_threads(None) is None and core.parse_threads("") is None
    for bad in ("0", "two", "1,-1"):
        with pytest.raises(EdgeclfError, match="--threads"):
            core.parse_threads(bad)
    assert core.parse_backends("LiteRT, onnxruntime,litert") == ["litert", "onnxruntime"]
    assert core.parse_backends(None) is None
    with pytest.raises(EdgeclfError, match="unknown backend 'tensorrt'"):
        core.parse_backends("litert,tensorrt")


def test_cli_reads_the_dataclass_defaults():
    from edgeclf.cli.bench import command

    params = {p.name: p for p in command.params}
    for option, field in (("runs", "runs"), ("warmup", "warmup"), ("remote_python", "remote_python"),
                          ("ssh_config", "ssh_config")):
        assert params[option].default == core.BenchOptions.__dataclass_fields__[field].default, option
    assert params["log"].default == str(core.BenchOptions.__dataclass_fields__["log"].default)


# --- fingerprint ---------------------------------------------------------------------------------------

X86_VNNI = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9354 32-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9354 32-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
X86_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2
"""
X86_AMX = X86_AVX2.replace("i7-4770 CPU @ 3.40GHz", "Xeon(R) Platinum 8480+").replace(
    "bmi2", "bmi2 avx512f avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8")
# Raspberry Pi 4 (BCM2711, 4x Cortex-A72, Armv8.0-A), 64-bit Raspberry Pi OS
PI4 = "".join(f"""processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

""" for i in range(4)) + """Hardware\t: BCM2835
Revision\t: c03114
Serial\t\t: 100000000000abcd
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
# Raspberry Pi 5 (BCM2712, 4x Cortex-A76, Armv8.2-A: dot product, no i8mm)
PI5 = "".join(f"""processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

""" for i in range(4)) + """Revision\t: d04170
Serial\t\t: 0000000000000000
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def test_fingerprint_x86_with_and_without_vnni():
    vnni = fingerprint.parse_cpuinfo(X86_VNNI, "x86_64")
    assert vnni["arch"] == "x86" and vnni["cpu"] == "AMD EPYC 9354 32-Core Processor"
    assert vnni["logical_cpus"] == 2 and vnni["int8_dot"] is True
    assert {"avx2", "avx512_vnni", "avx512f"} <= set(vnni["features"]) and "amx_int8" not in vnni["features"]
    avx2 = fingerprint.parse_cpuinfo(X86_AVX2, "x86_64")
    assert avx2["cpu"].startswith("Intel(R) Core(TM) i7-4770") and avx2["int8_dot"] is False
    assert avx2["features"] == ["avx2", "fma"]
    amx = fingerprint.parse_cpuinfo(X86_AMX, "x86_64")
    assert amx["int8_dot"] and {"amx_int8", "avx_vnni", "avx512_vnni"} <= set(amx["features"])
    note = fingerprint.int8_note("box", {**avx2, "cpu": avx2["cpu"]})
    assert "no int8 dot-product" in note and "for size there, not speed" in note and "AVX-512 VNNI" in note
    assert fingerprint.int8_note("box", vnni) is None


def test_fingerprint_raspberry_pi_4_and_5():
    pi4 = fingerprint.parse_cpuinfo(PI4, "aarch64")
    assert pi4 == {"cpu": "Cortex-A72", "arch": "arm", "features": ["asimd"], "int8_dot": False, "logical_cpus": 4,
                   "board": "Raspberry Pi 4 Model B Rev 1.4"}
    pi5 = fingerprint.parse_cpuinfo(PI5, "aarch64")
    assert pi5["cpu"] == "Cortex-A76" and pi5["board"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert pi5["features"] == ["asimd", "asimdhp", "asimddp"] and pi5["int8_dot"] is True
    assert "asimddp or i8mm" in fingerprint.int8_note("pi@pi4", pi4)
    pi5_note = fingerprint.int8_note("pi@pi5", pi5)  # the advice follows the features: dot product present
    assert "has int8 dot-product instructions (asimddp)" in pi5_note and "faster than fp32" in pi5_note
    # big.LITTLE: both cores named, features those they share
    mixed = PI5.replace("CPU part\t: 0xd0b", "CPU part\t: 0xd05", 2)
    assert fingerprint.parse_cpuinfo(mixed, "aarch64")["cpu"] == "2x Cortex-A55 + 2x Cortex-A76"


def test_throttled_and_meminfo_decoding():
    assert fingerprint.decode_throttled("throttled=0x0") == {"raw": "0x0", "now": [], "since_boot": []}
    d = fingerprint.decode_throttled("throttled=0x50005\n")
    assert d["now"] == ["under-voltage", "throttled"] and d["since_boot"] == ["under-voltage", "throttled"]
    assert fingerprint.decode_throttled("error=1") is None
    mem = fingerprint.parse_meminfo("MemTotal:        8052260 kB\nMemFree:  100 kB\nMemAvailable:    7123456 kB\n")
    assert mem == {"memory_mib": 7863, "memory_available_mib": 6956}


def test_fingerprint_of_this_machine_is_complete():
    fp = fingerprint.fingerprint()
    for key in ("cpu", "arch", "cores", "usable_cores", "features", "int8_dot", "os", "python", "versions",
                "governor", "temps_c", "throttled"):
        assert key in fp, key
    assert fp["cpu"] and fp["cores"] >= 1 and fp["python"] and "numpy" in fp["versions"]
    json.dumps(fp)  # travels as JSON from a device
    line = fingerprint.summary(fp)
    assert fp["cpu"] in line and f"Python {fp['python']}" in line


# --- remote: host syntax, ssh command, preflight decisions ----------------------------------------------

def test_parse_host():
    h = remote.parse_host("pi@raspberrypi.local")
    assert (h.user, h.host, h.port, h.destination) == ("pi", "raspberrypi.local", None, "pi@raspberrypi.local")
    h = remote.parse_host("root@127.0.0.1:2222")
    assert (h.user, h.host, h.port, h.text) == ("root", "127.0.0.1", 2222, "root@127.0.0.1:2222")
    assert remote.parse_host("jetson").destination == "jetson"
    h = remote.parse_host("pi@[fe80::1]:22")
    assert (h.host, h.port) == ("fe80::1", 22)
    for bad in ("", "pi@", "pi@host:port", "a b", "pi@host:70000"):
        with pytest.raises(EdgeclfError, match="--remote"):
            remote.parse_host(bad)


def test_ssh_command_and_remote_quoting():
    dev = remote.RemoteDevice(remote.parse_host("pi@pi5:2200"), "~/edgeclf env/bin/python",
                              ["IdentityFile=/keys/pi"], "/cfg/ssh_config")
    cmd = dev.ssh_command("x")
    assert cmd[:3] == ["ssh", "-F", "/cfg/ssh_config"]
    assert cmd[cmd.index("IdentityFile=/keys/pi") - 1] == "-o"
    assert "BatchMode=yes" in cmd and cmd[-4:] == ["2200", "--", "pi@pi5", "x"]
    assert cmd.index("IdentityFile=/keys/pi") < cmd.index("BatchMode=yes")  # the user's options win
    assert remote.remote_word("~/edgeclf env/bin/python") == "~'/edgeclf env/bin/python'"
    assert remote.remote_word("/usr/bin/python3") == "/usr/bin/python3"
    assert remote.remote_word("python3; rm -rf /") == "'python3; rm -rf /'"


def test_remote_python_under_the_local_home_is_the_device_home():
    assert remote.unexpand_home("/srv/me/edgeclf-env/bin/python", "/srv/me") == "~/edgeclf-env/bin/python"
    assert remote.unexpand_home("/srv/me2/env/bin/python", "/srv/me") == "/srv/me2/env/bin/python"
    assert remote.unexpand_home("/opt/env/bin/python", "/srv/me") == "/opt/env/bin/python"
    assert remote.unexpand_home("python3", "/") == "python3"


@pytest.mark.parametrize("code, stderr, expected", [
    (255, "ssh: connect to host 127.0.0.1 port 2: Connection refused", "cannot reach the host (connect to host"),
    (255, "ssh: Could not resolve hostname pi5: Name or service not known", "cannot reach the host (Could not"),
    (255, "pi@127.0.0.1: Permission denied (publickey).", "authentication refused"),
    (255, "Host key verification failed.", "host key verification failed"),
    (127, "bash: python3: command not found", "python3 not found there"),
    (127, "bash: /opt/env/bin/python: No such file or directory", "python3 not found there"),
    (1, "Traceback (most recent call last):\nRuntimeError: boom", "python3 failed (exit 1): RuntimeError: boom"),
])
def test_ssh_failures_are_one_line(code, stderr, expected):
    err = remote.classify_ssh_failure(remote.parse_host("pi@pi5"), code, stderr, "python3")
    assert isinstance(err, EdgeclfError) and expected in str(err) and "\n" not in str(err)
    assert str(err).startswith("--remote pi@pi5: ")


def test_preflight_refuses_no_or_other_edgeclf_with_the_pip_command():
    from importlib.metadata import version

    from edgeclf.bench.agent import PROTOCOL

    host = remote.parse_host("pi@pi5")
    pip = f'~/env/bin/python -m pip install "edgeclf[runtime]=={version("edgeclf")}"'
    with pytest.raises(remote.RemoteError) as exc:
        remote.check_probe(host, "~/env/bin/python", {"edgeclf": None, "python": "3.11.2"})
    assert "edgeclf is not installed" in str(exc.value) and str(exc.value).endswith(pip)
    with pytest.raises(remote.RemoteError) as exc:
        remote.check_probe(host, "~/env/bin/python", {"edgeclf": "0.0.9", "protocol": PROTOCOL,
                                                      "contract_schema": SCHEMA + 1})
    assert "contract schema" in str(exc.value) and str(exc.value).endswith(pip)
    with pytest.raises(remote.RemoteError, match="bench protocol None"):
        remote.check_probe(host, "python3", {"edgeclf": "0.0.1", "protocol": None})
    remote.check_probe(host, "python3", {"edgeclf": "0.2.0", "protocol": PROTOCOL, "contract_schema": SCHEMA})


def test_agent_unpack_stays_in_its_folder(tmp_path):
    from edgeclf.bench.agent import _unpack

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    (tmp_path / "w").mkdir()
    with pytest.raises((tarfile.TarError, ValueError)):  # tarfile's data filter, or our own check
        _unpack(buf, tmp_path / "w")
    assert not (tmp_path / "escaped.txt").exists()


# --- which backends a device gets ----------------------------------------------------------------------

def _art(fmt, precision, **kw):
    return Artifact(file=f"model_{precision}.{fmt}", format=fmt, precision=precision, bytes=1000, **kw)


def test_backends_for_a_device_lacking_one():
    everything = {"litert": True, "onnxruntime": True, "opencv": True}
    no_ort = {"litert": True, "onnxruntime": False, "opencv": True}
    fp32, int8 = _art("onnx", "fp32"), _art("onnx", "int8")
    assert core.backends_for(fp32, None, everything) == [("onnxruntime", None), ("opencv", None)]
    assert core.backends_for(int8, None, everything) == [("onnxruntime", None)]
    # the remote device lacks onnxruntime that the workstation has: its row says so, the others run
    rows = core.backends_for(int8, None, no_ort, everything, " on pi@pi5")
    assert rows == [("onnxruntime", "onnxruntime is not installed on pi@pi5 (pip install onnxruntime)")]
    assert core.backends_for(fp32, None, no_ort, everything, " on pi@pi5")[1] == ("opencv", None)
    # nowhere installed: one row, the install hint
    none = {"litert": False, "onnxruntime": False, "opencv": False}
    assert core.backends_for(_art("tflite", "int8"), None, none) == \
        [("litert", "no runtime for tflite installed (pip install ai-edge-litert)")]
    # asked for explicitly: only the backends that run the format
    assert core.backends_for(_art("tflite", "fp32"), ["opencv", "litert"], everything) == [("litert", None)]


# --- report writers on synthetic rows --------------------------------------------------------------------

class FakeDevice:
    def __init__(self, name, fp, backends):
        self.name, self.fingerprint, self.backends = name, fp, backends
        self.thermal_after = None


def _synthetic_result(tmp_path: Path, devices=("local", "pi@pi4:22")):
    """Two devices, one export with tflite fp32/int8 and onnx int8; known predictions and latencies."""
    arts = [_art("tflite", "fp32", val_top1=0.8), _art("tflite", "int8", val_top1=0.7,
                                                       input=TensorSpec("uint8", 1.0, 0)),
            _art("onnx", "int8")]
    for a in arts:
        (tmp_path / a.file).write_bytes(b"\0" * a.bytes)
    bundle = Bundle(classes=["ants", "bees"], input=InputSpec(96, 96), artifacts=arts,
                    source={"backbone": "mobilenet_v2_035"}, root=tmp_path)
    e = core.ExportInfo(tmp_path, bundle, "mobilenet_v2_035 96", val_paths=[f"{i}.jpg" for i in range(10)],
                        labels=np.array([0] * 5 + [1] * 5), split_source="synthetic")
    options = core.BenchOptions(exports=[tmp_path], data=tmp_path, runs=100, warmup=10, threads=[2])
    fps = {"local": {**fingerprint.parse_cpuinfo(X86_AVX2, "x86_64"), "cores": 4, "usable_cores": 4,
                     "os": "Linux", "python": "3.11.7", "versions": {"numpy": "2.4.6"}},
           "pi@pi4:22": {**fingerprint.parse_cpuinfo(PI4, "aarch64"), "cores": 4, "usable_cores": 4, "os": "Linux",
                         "python": "3.11.2", "versions": {"numpy": "2.4.6"}}}
    backends = {"local": {"litert": True, "onnxruntime": True, "opencv": True},
                "pi@pi4:22": {"litert": True, "onnxruntime": False, "opencv": True}}
    anywhere = {"litert": True, "onnxruntime": True, "opencv": True}
    # fp32 right on 8 of 10; int8 right on 7 (one more wrong in class bees); onnx int8 like fp32
    truth = e.labels
    fp32_pred = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    int8_pred = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    onehot = lambda pred: np.eye(2, dtype=np.float32)[pred]
    rows, probs = [], {}
    for name in devices:
        dev = FakeDevice(name, fps[name], backends[name])
        for job in core.plan_jobs(dev, [e], options, anywhere):
            row = core._row(job, options)
            if job.reason:
                row.status, row.note = Status.FAILED, job.reason
                probs[row.key] = None
            else:
                slow = 3.0 if name != "local" else 1.0
                times = [slow * (1.0 + 0.01 * (i % 10)) for i in range(100)]
                core._fill(row, {"status": "ok", "engine": "fake 1.0", "load_ms": 5.0, "cold_start_ms": 6.5,
                                 "import_ms": 100.0, "rss_peak_kib": 80 * 1024, "rss_baseline_kib": 60 * 1024,
                                 "times_ms": times})
                probs[row.key] = onehot(int8_pred if job.artifact.precision == "int8" else fp32_pred)
            rows.append(row)
    core.add_metrics(rows, [e], probs, None)
    devs = {name: {**fps[name], "threads": [2]} for name in devices}
    result = core.BenchResult(tmp_path / "out", rows, [e], devs[devices[0]], {
        "data": "synthetic", "exports": [str(tmp_path)], "runs": 100, "warmup": 10, "batch": 1, "threads": [2],
        "backends": "default", "min_top1": None, "devices": list(devices), "command": "", "created": "now",
        "seconds": 1.0}, {}, devices=devs)
    for name, info in devs.items():
        note = fingerprint.int8_note(name, info)
        if note:
            result.notes.append(note)
    return result


def test_metrics_on_synthetic_predictions(tmp_path):
    result = _synthetic_result(tmp_path)
    by = {(r.device, r.format, r.backend): r for r in result.rows}
    assert len(result.rows) == 6  # 3 artifacts x 2 devices; the Pi lacks onnxruntime
    ref = by[("local", "tflite-fp32", "litert")]
    assert ref.top1 == 0.8 and ref.drop_pt == 0 and ref.agreement == 1.0 and ref.mcnemar_p == 1.0
    int8 = by[("pi@pi4:22", "tflite-int8", "litert")]
    assert int8.top1 == 0.7 and int8.drop_pt == 10.0 and int8.agreement == 0.9
    assert (int8.only_reference_right, int8.only_model_right, int8.mcnemar_p) == (1, 0, 1.0)
    assert (int8.worst_class, int8.worst_class_drop_pt) == ("bees", 20.0)
    assert int8.export_diff_pt == 0.0 and ref.export_diff_pt == 0.0
    assert int8.p50_ms == pytest.approx(3.0 * 1.045) and int8.p50_ci_low_ms <= int8.p50_ms <= int8.p50_ci_high_ms
    assert int8.cold_start_ms == 6.5 and int8.rss_model_mib == 20.0
    missing = by[("pi@pi4:22", "onnx-int8", "onnxruntime")]
    assert missing.status is Status.FAILED and "not installed on pi@pi4:22" in missing.note and missing.top1 is None
    assert result.exit_code == 0
    result.settings["min_top1"] = 0.5
    assert result.exit_code == 3  # a failed row fails the gate


def test_report_files_on_synthetic_rows(tmp_path):
    result = _synthetic_result(tmp_path)
    result.out_dir.mkdir()
    files = report.write_all(result)
    assert set(files) == {"png", "csv", "json", "md"}
    with open(files["csv"], newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == report.CSV_COLUMNS
        rows = list(reader)
    assert [r["device"] for r in rows] == ["local"] * 3 + ["pi@pi4:22"] * 3
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["backend"] == "onnxruntime" and failed[0]["top1"] == ""
    assert {r["status"] for r in rows} == {"ok", "failed"}
    assert all(float(r["p50_ci_low_ms"]) <= float(r["p50_ms"]) <= float(r["p50_ci_high_ms"]) for r in rows if r["p50_ms"])
    data = json.loads(files["json"].read_text())
    assert set(data["devices"]) == {"local", "pi@pi4:22"} and data["devices"]["pi@pi4:22"]["cpu"] == "Cortex-A72"
    assert data["exports"][0]["references"]["pi@pi4:22"]["format"] == "tflite-fp32"
    assert all("export" not in r and "key" not in r for r in data["rows"])
    md = files["md"].read_text()
    assert "| Device | Format | Backend | Status |" in md and "p50 ms pi@pi4:22" in md
    assert "Cortex-A72" in md and "int8 models are for size there, not speed" in md
    assert "McNemar" in md and "## Failures" in md

    from rich.console import Console

    buf = io.StringIO()
    result.files = files
    report.print_table(result, Console(file=buf, width=200, highlight=False))
    text = buf.getvalue()
    assert "pi@pi4:22: Cortex-A72" in text and "p50 latency (95% CI), ms, device by device" in text
    assert "failed: pi@pi4:22 mobilenet_v2_035 96 onnx-int8 (onnxruntime)" in text
    for col in ("Status", "top-1", "Δ", "McNemar p", "worst class", "p50 (95% CI)", "p90", "p99", "FPS", "cold ms",
                "RAM"):
        assert col in text, col

    log = report.append_log(result, tmp_path / "log.jsonl")
    entry = json.loads(log.read_text().splitlines()[0])
    assert len(entry["rows"]) == 6 and entry["devices"]["pi@pi4:22"]["cpu"] == "Cortex-A72"


def test_answers_against_the_first_device_and_the_devices_own_decoding(tmp_path):
    result = _synthetic_result(tmp_path)
    rows = result.rows
    probs = {}
    onehot = lambda pred: np.eye(2, dtype=np.float32)[np.array(pred)]
    for r in rows:  # the Pi's int8 answers two images differently: one it loses, one it gains
        int8 = r.format == "tflite-int8"
        pred = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
        if r.device != "local" and int8:
            pred = [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
        probs[r.key] = onehot(pred) if r.status is Status.OK else None
    decoded = {k: p for k, p in probs.items() if k[0] != "local" and p is not None}
    core.add_cross_device(rows, probs)
    core.add_device_decoding(rows, probs, decoded)
    by = {(r.device, r.format): r for r in rows}
    assert by[("local", "tflite-int8")].vs_first_changed is None  # the first device is the reference
    pi = by[("pi@pi4:22", "tflite-int8")]
    assert (pi.vs_first_changed, pi.vs_first_lost, pi.vs_first_gained) == (2, 1, 1)
    assert by[("pi@pi4:22", "tflite-fp32")].vs_first_changed == 0
    assert pi.device_decode_changed == 0 and pi.device_decode_top1 == 0.7
    pi_rows = [r for r in rows if r.device == "pi@pi4:22"]
    note = core.cross_device_note("pi@pi4:22", pi_rows, "local")
    assert "tflite-int8 (litert) 2 of 10 images (1 lost, 1 gained)" in note and "identical: tflite-fp32" in note
    assert core.cross_device_note("local", [r for r in rows if r.device == "local"], "local") is None
    comparison = {"images": 10, "identical_images": 9, "max_abs_diff": 1, "pixels_differing": 0.0001,
                  "opencv": "5.1.0"}
    (line,) = core.decoding_notes("pi@pi4:22", {"mobilenet_v2_035 96": comparison}, pi_rows)
    assert "9 of 10 images byte-identical" in line and "the same top-1 class for every image" in line


def test_a_move_from_exports_figure_on_another_isa_is_named(tmp_path):
    result = _synthetic_result(tmp_path)
    pi_rows = [r for r in result.rows if r.device == "pi@pi4:22"]
    assert core.isa_note("pi@pi4:22", "aarch64", pi_rows) is None  # no move, and export did not say where
    for a in result.exports[0].bundle.artifacts:
        a.extra["verified_on"] = "x86_64"
    int8 = next(r for r in pi_rows if r.format == "tflite-int8")
    int8.export_diff_pt = -1.5
    note = core.isa_note("pi@pi4:22", "aarch64", pi_rows)
    assert "tflite-int8 (litert) -1.50 pt" in note and "export measured on x86_64" in note
    assert core.isa_note("local", "x86_64", [r for r in result.rows if r.device == "local"]) is None
    assert core.isa_note("pi@pi4:22", "x86_64", pi_rows) is None  # the same ISA: not this note's business

"""Fast tier: the emulated ARM device's pure parts, and bench's validation subset.

The /proc/cpuinfo an emulated device is shown (written from the AT_HWCAP and MIDR that QEMU reports, here
the values QEMU 7.2 reports for cortex-a72, cortex-a76 and max) must read back through the bench
fingerprint as the real board's does; the ``~/.ssh/config`` block must come and go without touching the
user's own lines; ``--max-images`` must keep every class in proportion, the same images every time.
No process is started.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeclf.bench import armdevice, fingerprint
from edgeclf.bench.valset import stratified_subset

# (AT_HWCAP, AT_HWCAP2, MIDR_EL1) as QEMU 7.2's cortex-a72, cortex-a76 and max report them inside
A72 = (0x8fb, 0x0, 0x410fd083)
A76 = (0x119ffb, 0x0, 0x414fd0b1)
MAX = (0xecfffffb, 0x7f877fff, 0x000f0510)


def test_hwcap_names_follow_the_kernel():
    assert fingerprint.hwcap_features(0x8fb) == ["fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"]
    assert "asimddp" in fingerprint.hwcap_features(A76[0]) and "asimddp" not in fingerprint.hwcap_features(A72[0])
    both = fingerprint.hwcap_features(*MAX[:2])
    assert {"asimddp", "sve", "i8mm", "sve2", "bf16"} <= set(both)


def test_emulated_cpuinfo_reads_back_as_the_board_would():
    a72 = fingerprint.parse_cpuinfo(armdevice.cpuinfo_text(*A72, 4), "aarch64")
    assert a72 == {"cpu": "Cortex-A72", "arch": "arm", "features": ["asimd"], "int8_dot": False, "logical_cpus": 4,
                   "board": ""}
    a76 = fingerprint.parse_cpuinfo(armdevice.cpuinfo_text(*A76, 2), "aarch64")
    assert a76["cpu"] == "Cortex-A76" and a76["features"] == ["asimd", "asimdhp", "asimddp"] and a76["int8_dot"]
    top = fingerprint.parse_cpuinfo(armdevice.cpuinfo_text(*MAX, 2), "aarch64")
    assert top["cpu"] == "ARM part 0x051" and {"asimddp", "i8mm", "sve", "sve2"} <= set(top["features"])
    # the note that goes into the bench report follows the features, and says the speed is not measured there
    emulated = {**a72, "emulation": {"emulator": "qemu-user 7.2.22", "cpu": "cortex-a72", "host_machine": "x86_64"}}
    note = fingerprint.int8_note("pi4", emulated)
    assert "for size there, not speed" in note and "emulated" in note
    assert "asimddp" in fingerprint.int8_note("pi5", {**a76, "emulation": emulated["emulation"]})
    line = fingerprint.summary({**emulated, "cores": 2, "usable_cores": 2})
    assert "emulated by qemu-user 7.2.22 (cortex-a72) on x86_64" in line and "not the device's speed" in line
    assert fingerprint.emulation_text({"cpu": "x"}) is None


def test_ssh_config_block_comes_and_goes(tmp_path):
    config = tmp_path / ".ssh" / "config"
    config.parent.mkdir()
    own = "Host *\n  ServerAliveInterval 30\n\nHost pi\n  HostName 192.0.2.7\n"
    config.write_text(own)
    armdevice.write_ssh_block(config, "pi4", "Host pi4\n  Port 2222\n")
    armdevice.write_ssh_block(config, "pi5", "Host pi5\n  Port 2223\n")
    text = config.read_text()
    assert text.index("Host pi5") < text.index("Host pi4") < text.index("Host *")  # ours first: ssh takes the first
    assert text.endswith(own) and oct(config.stat().st_mode & 0o777) == "0o600"
    armdevice.write_ssh_block(config, "pi4", "Host pi4\n  Port 3333\n")  # restarted: replaced, not doubled
    assert config.read_text().count("Host pi4") == 1 and "Port 3333" in config.read_text()
    armdevice.write_ssh_block(config, "pi4", None)
    armdevice.write_ssh_block(config, "pi5", None)
    assert config.read_text() == own
    armdevice.write_ssh_block(tmp_path / "none", "pi4", None)  # nothing to remove: no file made
    assert not (tmp_path / "none").exists()


def test_device_names_become_ssh_hosts():
    assert armdevice.NAME_RE.fullmatch("pi4-emulated_1.lan")
    for bad in ("", "-x", "a b", "a/b", "*", "x" * 70):
        assert not armdevice.NAME_RE.fullmatch(bad)


def test_stratified_subset_keeps_classes_in_proportion():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(len(labels))]
    keep = stratified_subset(labels, 30, seed=0)
    assert len(keep) == 30 and len(set(keep)) == 30 and list(keep) == sorted(keep)
    assert np.bincount(labels[keep]).tolist() == [21, 6, 3]
    assert stratified_subset(labels, 30, seed=0).tolist() == keep.tolist()  # the same images every time
    assert stratified_subset(labels, 30, seed=1).tolist() != keep.tolist()
    tiny = stratified_subset(labels, 3)
    assert sorted(np.bincount(labels[tiny]).tolist()) == [1, 1, 1]  # every class while n allows
    assert len(stratified_subset(labels, 2)) == 2
    assert stratified_subset(labels, None).tolist() == list(range(100))
    assert stratified_subset(labels, 500).tolist() == list(range(100))


@pytest.mark.parametrize("n", [1, 7, 13, 99])
def test_stratified_subset_sizes(n):
    labels = np.array([0] * 50 + [1] * 45 + [2] * 4)
    assert len(stratified_subset(labels, n)) == n

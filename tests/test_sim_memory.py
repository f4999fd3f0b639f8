"""sim.memory: the estimate of a run's memory, and what this machine has free (MemAvailable, a cgroup limit)."""
from pathlib import Path

import pytest

from precond import estimate_memory
from sim import memory


def test_the_estimate_adds_its_parts():
    est = memory.estimate(128, 64, "jacobi", extra={"window": 5})
    cells = 128 * 64
    assert est.parts["process"] == memory.PROCESS_BYTES and est.parts["window"] == 5
    assert est.parts["simulation"] == (memory.FIELD_BYTES * 129 * 65 + (memory.FRAME_BYTES + memory.RESET_BYTES) * cells)
    assert est.parts["solver"] == estimate_memory("jacobi", 128, 64) + estimate_memory("mgpcg", 128, 64)
    assert memory.estimate(128, 64, "mgpcg").parts["solver"] == estimate_memory("mgpcg", 128, 64)
    assert "process" not in memory.estimate(128, 64, "mgpcg", process=False).parts
    assert est.total == sum(est.parts.values())


def test_fields_count_at_their_power_of_two_capacity():
    assert [memory.capacity(n) for n in (1, 8, 9, 64, 65, 2048)] == [8, 8, 16, 64, 128, 2048]
    small, padded = memory.estimate(1024, 512, "none"), memory.estimate(1025, 512, "none")
    assert padded.parts["simulation"] - small.parts["simulation"] > memory.FIELD_BYTES * 1024 * 512


def test_check_refuses_in_one_line_naming_the_estimate_and_what_is_free(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: (2 * 10 ** 9, "MemAvailable"))
    assert memory.check(64, 64, "mgpcg").total < 2 * 10 ** 9
    with pytest.raises(memory.MemoryLimitError) as info:
        memory.check(2048, 2048, "mgpcg", what="--grid 2048x2048")
    message = str(info.value)
    assert "\n" not in message and message.startswith("--grid 2048x2048 with solver mgpcg needs about ")
    assert "(process 0.45, simulation" in message and "but 2.00 GB is available (MemAvailable)" in message
    monkeypatch.setattr(memory, "available", lambda: (None, "nowhere"))
    memory.check(2048, 2048, "mgpcg")  # free memory unknown: nothing is refused


def test_available_memory_reads_meminfo_and_a_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  100 kB\nMemFree:  10 kB\nMemAvailable:  50 kB\n")
    assert memory._meminfo_available(meminfo) == 50 * 1024
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("123\n")
    assert memory._cgroup_headroom(v2) is None
    (v2 / "memory.max").write_text("1000\n")
    assert memory._cgroup_headroom(v2) == 877
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2 ** 63 - 4096}\n")  # v1's "no limit"
    (v1 / "memory" / "memory.usage_in_bytes").write_text("5\n")
    assert memory._cgroup_headroom(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("600\n")
    assert memory._cgroup_headroom(v1) == 595
    assert memory._cgroup_headroom(tmp_path / "none") is None
    free, source = memory.available()
    assert free is None or free > 0 and source in ("MemAvailable", "the cgroup's memory limit")

"""glibc malloc thresholds for CPU inference: applied together or not at all, once per process, opt-out by env.
Run in subprocesses: the settings are process-wide."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

PROBE = """
import ctypes, resource, sys
from scanssc_ros.malloc_tuning import tune_malloc
first = tune_malloc()
assert tune_malloc() == first  # once per process
# a freed block (16 MB, or 256 MB: above any mmap threshold glibc accepts, a paper-model volume) is reused when
# tuned (no new page faults), faulted in again when not
size = int(sys.argv[1]) << 20
buf = ctypes.create_string_buffer(size); ctypes.memset(buf, 1, size); del buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buf = ctypes.create_string_buffer(size); ctypes.memset(buf, 1, size)
print(first, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(script: str, *argv: str, **env) -> tuple:
    """(what tune_malloc() returned, the fault count) that ``script`` prints as its last line."""
    out = subprocess.run([sys.executable, "-c", script, *argv], env={**os.environ, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return " ".join(out[:-1]), int(out[-1])


def _probe(mb: int = 16, **env) -> tuple:
    return _run(PROBE, str(mb), **env)


@pytest.mark.skipif(not GLIBC, reason="glibc only: elsewhere tune_malloc() does nothing (checked below)")
def test_thresholds_set_together_and_freed_memory_is_reused():
    tuned, faults_tuned = _probe()
    assert tuned == "glibc mmap threshold 32 MB, trim threshold 128 MB, one arena"
    off, faults_off = _probe(SCANSSC_MALLOC_TUNING="0")
    assert off == "None"
    # 16 MB = 4k pages: untuned, the block is an mmap again (glibc's adaptive threshold only reaches the freed
    # size) and faulted in page by page
    assert faults_off > 2000 and faults_tuned < faults_off / 10, (faults_tuned, faults_off)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_heap_mode_reuses_blocks_above_the_largest_mmap_threshold():
    heap, faults_heap = _probe(256, SCANSSC_MALLOC_TUNING="heap")
    assert heap == "glibc mmap off, heap trimming off, one arena"
    default, faults_default = _probe(256)
    # 256 MB = 64k pages: an mmap under the default tuning (32 MB is glibc's largest threshold), so faulted in
    # again; from the heap it is the freed block itself
    assert faults_default > 30000 and faults_heap < 1000, (faults_heap, faults_default)


def test_not_glibc_or_opted_out_leaves_malloc_alone(monkeypatch):
    from scanssc_ros import malloc_tuning

    monkeypatch.setattr(malloc_tuning, "_APPLIED", {})
    monkeypatch.setattr(malloc_tuning.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert malloc_tuning.tune_malloc() is None
    monkeypatch.setattr(malloc_tuning, "_APPLIED", {})
    monkeypatch.setenv("SCANSSC_MALLOC_TUNING", "off")
    assert malloc_tuning.tune_malloc() is None


def test_predictor_applies_it_on_cpu(monkeypatch):
    from scanssc_ros import malloc_tuning
    from scanssc_ros.config import variant
    from scanssc_ros.predictor import Predictor

    calls = []
    monkeypatch.setattr(malloc_tuning, "_APPLIED", {"result": "stub"})
    monkeypatch.setattr("scanssc_ros.predictor.tune_malloc", lambda: calls.append(1) or "stub")
    pred = Predictor.from_config(variant("tiny"))
    assert calls == [1] and pred.malloc_tuning == "stub"


THREAD_PROBE = """
import ctypes, resource, sys, threading
from scanssc_ros.malloc_tuning import tune_malloc
tuned = tune_malloc()
faults = []
def frames():  # the node's worker: blocks of a frame's sizes, all freed, three times
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        bufs = []
        for mb in (8, 30, 12, 30, 5, 30):
            bufs.append(ctypes.create_string_buffer(mb << 20))
            ctypes.memset(bufs[-1], 1, mb << 20)
        del bufs
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=frames)
t.start()
t.join()
print(tuned, max(faults[1:]))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_worker_thread_reuses_freed_memory():
    tuned, faults_tuned = _run(THREAD_PROBE)
    assert tuned.endswith("one arena")
    _, faults_off = _run(THREAD_PROBE, SCANSSC_MALLOC_TUNING="0")
    # 115 MB = 29k pages a frame: faulted in every frame without the tuning; with the thresholds alone the thread's
    # own arena gave 16k of them back every frame (64 MB heaps released when empty), on the main arena none
    assert faults_off > 20000 and faults_tuned < 1000, (faults_tuned, faults_off)

"""scanssc-train under torchrun: 2 CPU processes (gloo, loopback only) train, checkpoint, resume, validate; the
loss curve equals a single process with the same global batch (batch 1 x 2 accumulation steps)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kitti import fake_kitti  # noqa: F401  (session fixture)

from scanssc_ros import checkpoint
from scanssc_ros.cli import train as train_cli
from scanssc_ros.training.run_log import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def common(root, out):
    frames = ",".join(f"00/{i:06d}" for i in range(4))
    return ["--data-root", str(root), "--variant", "tiny", "--depth-mode", "mono", "--frames", frames,
            "--val-frames", "08/000000,08/000001", "--lr", "2e-3", "--milestones", "100", "--log-every", "1",
            "--workers", "0", "--threads", "1", "--no-progress", "--out", str(out)]


def torchrun(args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "scanssc_ros.cli.train", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_processes_match_one_with_accumulation(fake_kitti, tmp_path):  # noqa: F811
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # 4 frames, global batch 2 -> 2 steps per epoch. Stop after step 1, resume mid-epoch, validate at step 2.
    first = torchrun(common(fake_kitti, ddp) + ["--max-steps", "1"])
    assert "2 process(es) on cpu, global batch 2" in first.stderr
    assert checkpoint.read(ddp / "last.pt")["extra"]["train"]["state"]["step"] == 1
    torchrun(common(fake_kitti, ddp) + ["--max-steps", "3", "--resume", str(ddp / "last.pt")])
    assert train_cli.main(common(fake_kitti, single) + ["--max-steps", "3", "--grad-accum", "2"]) == 0

    records = read_jsonl(ddp / "train_log.jsonl")
    assert [r["type"] for r in records if r["type"] in ("start", "resume")] == ["start", "resume"]
    got = {r["step"]: r["loss"] for r in records if r["type"] == "train"}
    ref = {r["step"]: r["loss"] for r in read_jsonl(single / "train_log.jsonl", "train")}
    assert sorted(got) == sorted(ref) == [1, 2, 3]
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-4), (s, got, ref)

    # validation ran once, on both val frames split over the ranks and summed (the BN running statistics
    # differ between the runs, so only the bookkeeping is compared)
    val = read_jsonl(ddp / "train_log.jsonl", "val")
    assert [(v["step"], v["epoch"], v["frames"]) for v in val] == [(2, 1, 2)]
    state = checkpoint.read(ddp / "last.pt")["extra"]["train"]["state"]
    assert state["step"] == 3 and state["epoch"] == 1 and state["best_step"] == 2
    assert (ddp / "best.pt").is_file()
    extra = checkpoint.read(ddp / "best.pt")["extra"]
    assert extra["world_size"] == 2 and len(extra["train"]["rng"]) == 2

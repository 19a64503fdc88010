"""Multi-process training: torchrun with 2 CPU processes (gloo) against one process.

What makes the comparison exact rather than statistical: with the uniform
sampler, rank r's batch i under ``2 x batch_size 4`` holds windows
``4r .. 4r + 3`` of the single process's batch i under ``batch_size 8`` (the
same windows, split), and a per-frame-normalized CPC loss is a mean over
windows, so DDP's gradient average equals the single-process gradient. The
one thing that differs by design is where negatives come from (each rank
draws from its own windows, with its own RNG); the tests pin that down by
drawing each window's negatives from its own sequence with a seed fixed by the
window's place in the global batch, in both runs. Then two optimizer steps,
the second after a resume, agree to float rounding.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from audiossl.checkpoint import load_checkpoint
from audiossl.config import build_config
from audiossl.data.corpus import scan_corpus
from audiossl.data.windows import WindowDataset, epoch_batches
from audiossl.objectives import cpc, infonce
from audiossl.train import TRAIN_LOG, train

from conftest import package_env

HARNESS = """
import sys
sys.path.insert(0, {tests!r})
from test_distributed import pin_negatives
from audiossl.cli import main
pin_negatives()
sys.exit(main(sys.argv[1:]))
"""


def per_window_candidates(lengths, num_frames, num_steps, num_negatives, policy="batch"):
    """``sample_candidates`` window by window, seeded by the window's index in the global batch."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    batch = len(lengths)
    candidates, valid = [], []
    for b in range(batch):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 + rank * batch + b)
            cand, ok = infonce.sample_candidates(lengths[b:b + 1], num_frames, num_steps, num_negatives, "sequence")
        candidates.append(cand.view(num_steps, 1, -1, 1 + num_negatives) + b * num_frames)
        valid.append(ok.view(num_steps, 1, -1))
    return (torch.cat(candidates, 1).reshape(num_steps, -1, 1 + num_negatives),
            torch.cat(valid, 1).reshape(num_steps, -1))


def pin_negatives() -> None:
    cpc.sample_candidates = per_window_candidates


def overrides(base: dict, max_steps: int, batch_size: int) -> dict:
    return {**base, "max_steps": max_steps, "batch_size": batch_size, "ckpt_every": 1, "cpc_negatives": 4}


def torchrun(harness: Path, corpus: Path, exp_dir: Path, settings: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(harness), "train", "--data", str(corpus), "--exp-dir", str(exp_dir), "--no-progress",
               *(f"{k}={v}" for k, v in settings.items())]
    env = package_env(OMP_NUM_THREADS="1")
    # 11 s on idle cores, minutes when another job holds them
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("sampler", ["uniform", "same_speaker"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_reads_its_own_windows(tiny_corpus, sampler, world_size):
    utterances, _ = scan_corpus(tiny_corpus, progress=False)
    dataset = WindowDataset(utterances, 3200, 16000, seed=5)
    for epoch in range(2):
        single = epoch_batches(dataset, epoch, 2, sampler)
        ranks = [epoch_batches(dataset, epoch, 2, sampler, rank, world_size) for rank in range(world_size)]
        steps = len(ranks[0])
        assert steps > 0 and all(len(r) == steps for r in ranks)  # no rank waits for another
        # Step i of rank r is batch i * world + r of the one-process order: disjoint, same set.
        assert [batch for i in range(steps) for r in ranks for batch in [r[i]]] == single[:steps * world_size]
    if sampler == "uniform":  # 2 x 4 windows are the 8 windows of one process's batch
        halves = [epoch_batches(dataset, 0, 4, sampler, rank, 2) for rank in range(2)]
        whole = epoch_batches(dataset, 0, 8, sampler)
        assert all(halves[0][i] + halves[1][i] == whole[i] for i in range(len(halves[0])))


def test_torchrun_trains_like_one_process_and_resumes(tiny_corpus, tiny_overrides, tmp_path, monkeypatch):
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS.format(tests=str(Path(__file__).parent)))
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"

    # Two processes x 4 windows: one step, then a second launch resumes for one more.
    first = torchrun(harness, tiny_corpus, ddp_dir, overrides(tiny_overrides, 1, 4))
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(harness, tiny_corpus, ddp_dir, overrides(tiny_overrides, 2, 4))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("resuming from") == 1 and "at step 1" in second.stdout  # rank 0 alone speaks

    # One process x 8 windows, the same way.
    monkeypatch.setattr(cpc, "sample_candidates", per_window_candidates)
    for max_steps in (1, 2):
        train(build_config(overrides=overrides(tiny_overrides, max_steps, 8)), tiny_corpus, single_dir,
              progress=False)

    ddp, single = load_checkpoint(ddp_dir / "checkpoint.pt"), load_checkpoint(single_dir / "checkpoint.pt")
    assert ddp["step"] == single["step"] == 2
    assert len(ddp["rng"]) == 2 and len(single["rng"]) == 1  # one RNG state per rank
    for name, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, atol=1e-5, rtol=0, msg=name)
    for key, state in single["optimizer"]["state"].items():  # exp_avg holds the (clipped) gradients
        torch.testing.assert_close(ddp["optimizer"]["state"][key]["exp_avg"], state["exp_avg"], atol=1e-6, rtol=1e-4)
    ddp_log = [line.split("\t") for line in (ddp_dir / TRAIN_LOG).read_text().splitlines()[1:]]
    single_log = [line.split("\t") for line in (single_dir / TRAIN_LOG).read_text().splitlines()[1:]]
    assert [row[0] for row in ddp_log] == [row[0] for row in single_log] == ["1", "2"]
    for (_, ddp_loss, _), (_, single_loss, _) in zip(ddp_log, single_log):
        assert abs(float(ddp_loss) - float(single_loss)) < 1e-5  # the logged loss is the mean over ranks

    # Only rank 0 wrote: one TensorBoard file per launch, nothing per rank.
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
    assert len(list((ddp_dir / "tb").iterdir())) == 2

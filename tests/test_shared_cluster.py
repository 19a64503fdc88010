"""Faults of shared clusters: data that cannot be read, honest resumes, two runs in one folder, a full disk.

Each test injects the fault and checks the outcome: unreadable data stops or
refuses in one line instead of hanging; a resumed run applies the lr and
weight decay it records, and refuses data settings under which the saved
position means other windows; a second run on a held folder is refused
without touching the first run's files; a full disk is one line and leaves
the previous checkpoint whole.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch

from audiossl.checkpoint import load_checkpoint
from audiossl.cli import main
from audiossl.data.corpus import Utterance, read_manifest, write_manifest
from audiossl.train import MAX_UNREADABLE_BATCHES, TRAIN_LOG, Pretrainer
from audiossl.train.resume import resume_position
from audiossl.utils import atomic
from audiossl.utils.lock import FolderLock

pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(data: Path, exp: Path, overrides: dict) -> list[str]:
    return ["train", "--data", str(data), "--exp-dir", str(exp), "--no-progress",
            *(f"{k}={v}" for k, v in overrides.items())]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# --- item 1: no readable window ------------------------------------------------------

def test_a_manifest_none_of_whose_paths_resolve_is_refused_before_training(tiny_corpus, tiny_overrides, tmp_path,
                                                                         capsys, monkeypatch):
    # Paths written relative to the current folder, read (as documented) relative to the manifest's.
    monkeypatch.chdir(tmp_path)
    lists = tmp_path / "lists"
    utterances = read_manifest_of(tiny_corpus, tmp_path)
    relative = [Utterance(u.id, os.path.relpath(u.path, tmp_path), u.speaker, u.num_samples, u.sample_rate)
                for u in utterances]
    write_manifest(relative, lists / "train.tsv")
    exp = tmp_path / "exp"
    capsys.readouterr()
    assert main(train_args(lists / "train.tsv", exp, tiny_overrides)) == 2
    line = one_error_line(capsys)
    assert "none of its 12 audio files can be opened" in line and "no such file" in line
    assert f"relative paths in a manifest are read from its folder, {lists}" in line
    assert not (exp / "checkpoint.pt").exists()


def read_manifest_of(corpus: Path, tmp_path: Path):
    assert main(["prepare", "--data", str(corpus), "--out", str(tmp_path / "full.tsv")]) == 0
    return read_manifest(tmp_path / "full.tsv")


def test_a_corpus_that_vanishes_mid_run_stops_with_one_line(tiny_corpus, tiny_overrides, tmp_path, capsys,
                                                           monkeypatch):
    exp, moved = tmp_path / "exp", tmp_path / "moved"
    forward, calls = Pretrainer.forward, []

    def corpus_moved_at_step_2(self, batch):
        calls.append(1)
        if len(calls) == 2:
            shutil.move(tiny_corpus, moved)
        return forward(self, batch)

    monkeypatch.setattr(Pretrainer, "forward", corpus_moved_at_step_2)
    assert main(train_args(tiny_corpus, exp, {**tiny_overrides, "max_steps": 1000, "ckpt_every": 1000})) == 1
    line = one_error_line(capsys)
    assert f"{MAX_UNREADABLE_BATCHES} batches in a row had no readable window" in line
    assert str(tiny_corpus) in line and "the files are gone" in line
    assert len(calls) == 2  # stopped at the third step, after a bounded number of batches


# --- items 3 and 4: what a resume may change ---------------------------------------------

def test_lr_and_weight_decay_overrides_on_resume_are_applied(tiny_corpus, tiny_overrides, tmp_path, capsys):
    exp = tmp_path / "exp"
    overrides = {**tiny_overrides, "max_steps": 2, "decay": "constant"}
    assert main(train_args(tiny_corpus, exp, overrides)) == 0
    capsys.readouterr()
    assert main(train_args(tiny_corpus, exp, {**overrides, "max_steps": 4, "lr": 1e-6, "weight_decay": 0.1})) == 0
    out = capsys.readouterr().out
    assert "note: lr changed on resume: 0.001 -> 1e-06" in out and "step 3 uses 1e-06" in out
    assert "note: weight_decay changed on resume: 0 -> 0.1" in out
    rows = [line.split("\t") for line in (exp / TRAIN_LOG).read_text().splitlines()[1:]]
    assert [float(lr) for _, _, lr in rows] == [1e-3, 1e-3, 1e-6, 1e-6]  # used, not only recorded
    ckpt = load_checkpoint(exp / "checkpoint.pt")
    group = ckpt["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"], group["initial_lr"]) == (1e-6, 0.1, 1e-6)
    assert ckpt["scheduler"]["base_lrs"] == [1e-6]
    assert (ckpt["config"]["train"]["lr"], ckpt["config"]["train"]["weight_decay"]) == (1e-6, 0.1)


@pytest.mark.parametrize("change", [{"batch_size": 2}, {"window_samples": 4800}, {"sampler": "same_speaker"},
                                    {"seed": 2}], ids=lambda c: next(iter(c)))
def test_data_settings_changed_on_resume_are_refused(tiny_corpus, tiny_overrides, tmp_path, capsys, change):
    exp = tmp_path / "exp"
    assert main(train_args(tiny_corpus, exp, {**tiny_overrides, "max_steps": 2})) == 0
    before = (exp / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(train_args(tiny_corpus, exp, {**tiny_overrides, **change})) == 2
    line = one_error_line(capsys)
    (key, new), = change.items()
    assert f"this run asks for {key}={new!r}" in line and "stopped at epoch 0, batch 2" in line
    assert (exp / "checkpoint.pt").read_bytes() == before


def test_another_number_of_processes_resumes_at_the_same_place_in_the_epoch():
    ckpt = {"epoch": 1, "position": 5, "rng": [None, None]}  # 2 processes x 5 batches = 10 global batches
    assert resume_position(ckpt, 2) == (5, None)
    position, note = resume_position(ckpt, 1)
    assert position == 10 and "written by 2 process(es), this run has 1" in note
    assert resume_position(ckpt, 3)[0] == 3  # 9 global batches: at most world - 1 read twice, none skipped


# --- item 5: one run per folder --------------------------------------------------------

def test_a_second_run_on_a_held_folder_is_refused_and_touches_nothing(tiny_corpus, tiny_overrides, tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    # The running job's temporary checkpoint, mid-write; its pid is alive (it is ours).
    live_tmp = exp / f".checkpoint.pt.tmp{os.getpid()}"
    live_tmp.write_bytes(b"half a checkpoint")
    with FolderLock(exp, "audiossl train"):
        assert main(train_args(tiny_corpus, exp, tiny_overrides)) == 2
        line = one_error_line(capsys)
        assert f"{exp} is in use by audiossl train (pid {os.getpid()} on {socket.gethostname()}" in line
        assert live_tmp.read_bytes() == b"half a checkpoint"
        assert sorted(p.name for p in exp.iterdir()) == [".checkpoint.pt.tmp" + str(os.getpid()), ".lock"]
    # Released: the next run takes the folder, and as the only writer removes what a killed one left.
    assert main(train_args(tiny_corpus, exp, {**tiny_overrides, "max_steps": 1})) == 0
    assert not live_tmp.exists() and (exp / "checkpoint.pt").is_file()
    assert (exp / ".lock").read_text() == ""  # released: no holder named


def test_a_second_extraction_into_a_held_folder_waits_then_reuses(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "features"
    args = ["extract", "--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(out), "--num-workers", "0",
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0  # the other extraction's arrays
    capsys.readouterr()
    lock = FolderLock(out, "audiossl extract").__enter__()
    threading.Timer(0.5, lock.__exit__, (None, None, None)).start()  # the other extraction ends
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"waiting for {out}: in use by audiossl extract (pid {os.getpid()}" in captured.err
    # Once the holder is gone it takes the folder and reuses what the holder wrote, redoing nothing.
    assert f"{out}: 12 array set(s) reused, 0 added, 0 redone" in captured.out


# --- item 8: a full disk -----------------------------------------------------------------

def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tiny_corpus, tiny_overrides, tmp_path, capsys,
                                                                  monkeypatch):
    exp = tmp_path / "exp"
    opened, real_open = [], atomic._open_for_writing

    def second_checkpoint_to_dev_full(path):  # writes fail with ENOSPC inside torch's zip writer
        if path.name.startswith(".checkpoint.pt.tmp"):
            opened.append(path)
            if len(opened) == 2:
                return open("/dev/full", "wb")
        return real_open(path)

    monkeypatch.setattr(atomic, "_open_for_writing", second_checkpoint_to_dev_full)
    assert main(train_args(tiny_corpus, exp, {**tiny_overrides, "max_steps": 4, "ckpt_every": 2})) == 1
    line = one_error_line(capsys)
    assert line == (f"audiossl train: error: no space left on device writing {exp / 'checkpoint.pt'}; "
                    "the previous checkpoint is intact")
    assert load_checkpoint(exp / "checkpoint.pt")["step"] == 2
    assert not list(exp.glob(".checkpoint.pt.tmp*"))
    monkeypatch.undo()
    assert main(train_args(tiny_corpus, exp, {**tiny_overrides, "max_steps": 4, "ckpt_every": 2})) == 0
    assert load_checkpoint(exp / "checkpoint.pt")["step"] == 4


def test_a_full_disk_writing_a_manifest_says_nothing_was_there_before(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_open_for_writing", lambda path: open("/dev/full", "wb"))
    utterance = Utterance("u", str(tmp_path / "u.flac"), "s", 16000, 16000)
    with pytest.raises(atomic.DiskFullError, match=r"no space left on device writing .*m.tsv; no manifest was "
                       "there before"):
        write_manifest([utterance], tmp_path / "m.tsv")
    assert list(tmp_path.iterdir()) == []


def test_torch_save_into_a_full_disk_raises_what_atomic_write_recognises(tmp_path):
    # The fault the monkeypatch above injects, as torch really reports it: an OSError chained to a RuntimeError.
    with open("/dev/full", "wb", buffering=0) as f, pytest.raises(Exception) as error:
        torch.save({"w": torch.zeros(10_000)}, f)
    assert atomic._disk_full(error.value) is not None

"""Security: a checkpoint is data, never code; utterance ids never escape ``--out``.

A crafted checkpoint whose unpickling would run a shell command is refused
with a ``CheckpointError`` and the command never runs, whether the file is
opened by ``audiossl.load_model`` or by ``audiossl train`` resuming. An
utterance id with ``..`` (or an absolute one) in a manifest is refused before
``audiossl extract`` writes anything.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import audiossl
from audiossl.checkpoint import CheckpointError, load_checkpoint
from audiossl.cli import main


class RunsAShellCommand:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def craft_checkpoint(path: Path, marker: Path, container: str) -> None:
    payload = {"config": {}, "model": {"weight": torch.zeros(2)}, "step": RunsAShellCommand(f"touch {marker}")}
    if container == "torch.save zip":
        torch.save(payload, path)
    else:  # a bare pickle stream, the pre-1.6 torch.save format
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)


@pytest.fixture(params=["torch.save zip", "legacy pickle"])
def crafted(tmp_path, request):
    marker = tmp_path / "pwned"
    path = tmp_path / "exp" / "checkpoint.pt"
    path.parent.mkdir()
    craft_checkpoint(path, marker, request.param)
    # The exploit is real: plain unpickling runs the command.
    with open(path, "rb") as f:
        if request.param == "legacy pickle":
            pickle.load(f)
        else:
            torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_load_model_refuses_a_checkpoint_that_would_run_code(crafted):
    path, marker = crafted
    with pytest.raises(CheckpointError, match="refused: loading it would need to run code") as error:
        audiossl.load_model(path)
    assert str(path) in str(error.value)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_train_refuses_to_resume_from_a_checkpoint_that_would_run_code(crafted, tiny_corpus, tiny_overrides,
                                                                        capsys):
    path, marker = crafted
    before = path.read_bytes()
    args = ["train", "--data", str(tiny_corpus), "--exp-dir", str(path.parent), "--no-progress",
            *(f"{k}={v}" for k, v in tiny_overrides.items())]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and str(path) in err
    assert not marker.exists()
    assert path.read_bytes() == before  # not overwritten by a fresh run either


@pytest.mark.parametrize("bad_id", ["../../escaped", "spk/../../../escaped", "<tmp>/escaped"])
def test_extract_refuses_utterance_ids_that_escape_out(tiny_corpus, tmp_path, capsys, bad_id):
    bad_id = bad_id.replace("<tmp>", str(tmp_path))  # an absolute id escapes too
    manifest = tmp_path / "lists" / "evil.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(manifest)]) == 0
    header, first, *rest = manifest.read_text().splitlines()
    manifest.write_text("\n".join([header, bad_id + first[first.index("\t"):], *rest]) + "\n")
    out = tmp_path / "work" / "features"
    capsys.readouterr()
    code = main(["extract", "--baseline", "mfcc", "--data", str(manifest), "--out", str(out),
                 "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("audiossl")]
    assert len(errors) == 1 and bad_id in errors[0] and "Traceback" not in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".npy"]
    assert all(out in p.parents for p in written)
    assert not any("escaped" in p.name for p in tmp_path.rglob("*"))


def test_extract_never_writes_outside_out_for_audio_paths_with_dotdot(tiny_corpus, tmp_path, capsys):
    manifest = tmp_path / "lists" / "evil.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(manifest)]) == 0
    header, first, *rest = manifest.read_text().splitlines()
    utt_id, audio, *others = first.split("\t")
    outside = tmp_path / "outside.flac"
    outside.write_bytes(Path(audio).read_bytes())
    # Relative to the manifest's folder: lists/../outside.flac, a real file beside the corpus.
    manifest.write_text("\n".join([header, "\t".join([utt_id, "../outside.flac", *others]), *rest]) + "\n")
    out = tmp_path / "work" / "features"
    code = main(["extract", "--baseline", "mfcc", "--data", str(manifest), "--out", str(out),
                 "--num-workers", "0", "--device", "cpu", "--no-progress"])
    # The arrays mirror the audio's path below the manifest's folder; this one would climb out of OUT: refused
    # before any array is written.
    assert code == 2
    assert "would lie outside OUT/<layer>; refused" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.npy"))

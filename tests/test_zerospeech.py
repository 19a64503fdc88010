"""extract --format zerospeech: the ZeroSpeech 2021 submission layout and its meta.yaml."""

from __future__ import annotations

import numbers

import numpy as np
import pytest
import yaml

from audiossl.cli import main
from audiossl.extract import FeatureSet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared

# zerospeech2021's meta.py validates these entries and types.
META_FIELDS = {"author": str, "affiliation": str, "description": str, "open_source": bool, "train_set": str,
               "visually_grounded": bool, "gpu_budget": numbers.Number, "parameters": dict}


@pytest.mark.parametrize("file_type", ["npy", "txt"])
def test_zerospeech_layout(tmp_path, tiny_corpus, file_type):
    out = tmp_path / "submission"
    run = ["--data", str(tiny_corpus), "--no-progress", "--num-workers", "0", "--device", "cpu"]
    assert main(["extract", "--baseline", "mfcc", "--out", str(out), "--format", "zerospeech",
                 "--zerospeech-subset", "dev-clean", "--zerospeech-file", file_type, *run]) == 0
    features = FeatureSet(out / "features" / "mfcc")
    files = sorted((out / "phonetic" / "dev-clean").iterdir())
    assert [f.name for f in files] == sorted(f"{u}.{file_type}" for u in features.num_frames)
    for path in files:
        array = np.load(path) if file_type == "npy" else np.loadtxt(path)
        assert array.ndim == 2
        np.testing.assert_allclose(array, features.load(path.stem), rtol=1e-6, atol=1e-6)
    meta = yaml.safe_load((out / "meta.yaml").read_text())
    assert sorted(meta) == sorted(META_FIELDS)
    for key, kind in META_FIELDS.items():
        assert isinstance(meta[key], kind), key
    assert meta["parameters"] == {"phonetic": {"metric": "cosine", "frame_shift": 0.01},
                                  "semantic": {"metric": "cosine", "pooling": "mean"}}
    assert "mfcc" in meta["description"]


def test_zerospeech_layout_needs_one_layer(tmp_path, tiny_corpus, capsys):
    assert main(["extract", "--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(tmp_path / "a"),
                 "--format", "zerospeech", "--no-progress", "--num-workers", "0"]) == 0
    assert (tmp_path / "a" / "phonetic" / "corpus").is_dir()  # default subset: the --data folder's name
    assert main(["extract", "--ckpt", str(tmp_path / "none.pt"), "--layer", "encoder,context", "--data",
                 str(tiny_corpus), "--out", str(tmp_path / "b"), "--format", "zerospeech", "--no-progress"]) == 2
    assert "one --layer, not encoder, context" in capsys.readouterr().err


def test_zerospeech_ids_and_subset_are_checked_before_any_work(tmp_path, tiny_corpus, capsys):
    """An id such as '.' was refused only after the whole extraction, leaving a half-written OUT/phonetic; a
    manifest named the subset after its file (dot.tsv -> 'dot')."""
    manifest = tmp_path / "dot.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(manifest)]) == 0
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], ".\t" + lines[1].split("\t", 1)[1], *lines[2:]]) + "\n")
    capsys.readouterr()
    out = tmp_path / "submission"
    run = ["extract", "--baseline", "mfcc", "--data", str(manifest), "--out", str(out), "--format", "zerospeech",
           "--no-progress", "--num-workers", "0"]
    cases = ((["--zerospeech-subset", "dev-clean"], "1 utterance id(s) are not plain file names, e.g. '.'"),
             ([], "name the subset with --zerospeech-subset"),
             (["--zerospeech-subset", "../up"], "subset '../up' must be a plain folder name"))
    for extra, needle in cases:
        assert main(run + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not out.exists()  # nothing extracted, nothing half-written

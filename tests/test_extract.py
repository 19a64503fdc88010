"""Tests for audiossl.extract and the hand-made baseline models."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiossl.cli import main
from audiossl.config import build_config
from audiossl.extract import ExtractOptions, FeatureError, FeatureSet, extract, forward_chunked, select_utterances
from audiossl.features import INDEX, INDEX_COLUMNS, feature_path, relative_paths
from audiossl.models.baselines import add_deltas, build_baseline
from audiossl.models.model import build_model

QUIET = ExtractOptions(progress=False)
TINY = {"encoder_channels": 16, "context_dim": 16}
MODELS = {
    "gru_2_layers": {**TINY, "context_layers": 2},
    "lstm_logmel": {**TINY, "frontend": "logmel", "context": "lstm", "encoder_kernels": [3],
                    "encoder_strides": [1], "encoder_paddings": [1]},
    "no_context": {**TINY, "context": "none", "context_layers": 0},
    "transformer": {**TINY, "context": "transformer", "context_ff_dim": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


def make_model(name: str):
    torch.manual_seed(0)
    if name in ("mfcc", "logmel"):
        return build_baseline(name)
    return build_model(build_config(overrides=MODELS[name]).model).eval()


def batch(lengths=(16000, 9811, 4000)):
    torch.manual_seed(1)
    lengths = torch.tensor(lengths)
    wavs = torch.randn(len(lengths), int(lengths.max())) * 0.1
    return wavs * (torch.arange(wavs.shape[1]) < lengths[:, None]), lengths


@pytest.mark.parametrize("name", [*MODELS, "mfcc", "logmel"])
def test_padded_batch_equals_single_runs(name):
    model = make_model(name)
    wavs, lengths = batch()
    feats, frame_lengths = forward_chunked(model, wavs, lengths, model.layer_names)
    assert torch.equal(frame_lengths, model.output_lengths(lengths))
    for row, length in enumerate(lengths):
        single, single_lengths = forward_chunked(model, wavs[row: row + 1, :length], lengths[row: row + 1],
                                                 model.layer_names)
        frames = int(single_lengths[0])
        assert frames == int(frame_lengths[row])
        for layer in model.layer_names:
            assert single[layer].shape[1] == frames
            torch.testing.assert_close(feats[layer][row, :frames], single[layer][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gru_2_layers", "lstm_logmel", "no_context", "mfcc", "logmel"])
@pytest.mark.parametrize("chunk_frames", [7, 33])
def test_chunked_equals_one_pass(name, chunk_frames):
    model = make_model(name)
    wavs, lengths = batch()
    whole, whole_lengths = forward_chunked(model, wavs, lengths, model.layer_names)
    chunked, chunked_lengths = forward_chunked(model, wavs, lengths, model.layer_names, chunk_frames)
    assert torch.equal(whole_lengths, chunked_lengths)
    for layer in model.layer_names:
        assert chunked[layer].shape == whole[layer].shape
        torch.testing.assert_close(chunked[layer], whole[layer], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("overrides, layers", [
    (MODELS["transformer"], ["context"]),
    ({**MODELS["lstm_logmel"], "cmvn": True}, ["encoder"]),
])
def test_chunking_refused_where_it_would_change_features(overrides, layers):
    model = build_model(build_config(overrides=overrides).model).eval()
    wavs, lengths = batch()
    with pytest.raises(FeatureError, match="chunk"):
        forward_chunked(model, wavs, lengths, layers, chunk_frames=10)


def test_transformer_encoder_layer_may_be_chunked():
    model = make_model("transformer")
    wavs, lengths = batch()
    whole, _ = forward_chunked(model, wavs, lengths, ["encoder"])
    chunked, _ = forward_chunked(model, wavs, lengths, ["encoder"], chunk_frames=9)
    torch.testing.assert_close(chunked["encoder"], whole["encoder"])


def test_files_shorter_than_the_receptive_field_give_no_frames():
    model = make_model("gru_2_layers")
    feats, frame_lengths = forward_chunked(model, torch.zeros(2, 100), torch.tensor([100, 50]), ["context"])
    assert frame_lengths.tolist() == [0, 0]
    assert feats["context"].shape == (2, 0, model.context_dim)


def test_deltas_of_a_ramp_are_its_slope_and_edges_are_repeated():
    ramp = torch.arange(10.0)[None, :, None] * 3.0  # (1, T, 1), slope 3
    padded = torch.cat([ramp, torch.full((1, 4, 1), 99.0)], dim=1)  # padding must not leak in
    deltas = add_deltas(padded, torch.tensor([10]), window=2)[0, :10, 0]
    torch.testing.assert_close(deltas[2:8], torch.full((6,), 3.0))
    # Edge frames repeat: at t = 0 the window reads x0 x0 x0 x1 x2, at t = 9 x7 x8 x9 x9 x9.
    torch.testing.assert_close(deltas[0], torch.tensor((-2 * 0 - 0 + 3 + 2 * 6) / 10.0))
    torch.testing.assert_close(deltas[9], torch.tensor((-2 * 21 - 24 + 27 + 2 * 27) / 10.0))


@pytest.mark.parametrize("name, dim", [("mfcc", 39), ("logmel", 80)])
def test_baselines_give_one_frame_per_phone_label(name, dim):
    model = build_baseline(name)
    assert model.layer_names[0] == "encoder" and model.encoder_dim == dim
    wavs, lengths = batch()
    feats, frame_lengths = forward_chunked(model, wavs, lengths, ["encoder"])
    assert frame_lengths.tolist() == (lengths // 160).tolist()
    assert feats["encoder"].shape[-1] == dim
    assert torch.isfinite(feats["encoder"]).all()


def read_index(folder: Path) -> list[dict]:
    with open(folder / INDEX, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("file_format", ["npy", "npz"])
def test_extract_writes_arrays_that_match_the_model(tiny_corpus, tmp_path, file_format):
    model = make_model("gru_2_layers")
    utterances, _ = select_utterances(tiny_corpus, progress=False)
    sets = extract(model, utterances, tmp_path / "feats", {"ctx": "context", "encoder": "encoder"},
                   {"checkpoint": "/x/checkpoint.pt"},
                   ExtractOptions(root=tiny_corpus, file_format=file_format, batch_size=5, progress=False))
    assert sorted(sets) == ["ctx", "encoder"]
    for name, layer in (("ctx", "context"), ("encoder", "encoder")):
        features = FeatureSet(tmp_path / "feats" / name)
        assert features.meta["layer"] == layer and features.frame_rate == 100
        assert features.meta["format"] == file_format
        assert sorted(features.num_frames) == sorted(u.id for u in utterances)
        assert features.speakers == {u.id: u.speaker for u in utterances}
        # The tree mirrors the corpus: OUT/<layer>/<audio path relative to the corpus, new suffix>.
        rows = read_index(features.folder)
        assert tuple(rows[0]) == INDEX_COLUMNS and len(rows) == len(utterances)
        for utt, row in zip(utterances, rows):
            expected = Path(utt.path).relative_to(tiny_corpus.resolve()).with_suffix(f".{file_format}")
            assert row["id"] == utt.id and Path(row["path"]) == expected
            assert (features.folder / expected).is_file() and features.paths[utt.id] == features.folder / expected
            assert int(row["frames"]) == features.num_frames[utt.id] and int(row["dim"]) == 16
            assert float(row["frame_rate_hz"]) == 100 and row["layer"] == layer
            assert row["checkpoint"] == "/x/checkpoint.pt"
        if file_format == "npz":
            with np.load(features.paths[utterances[0].id]) as archive:
                assert list(archive) == ["features"]
    # Every array equals a single run of the model on that file.
    from audiossl.data.audio import read_audio

    for utt in utterances[:3]:
        wav = read_audio(utt.path)
        expected, _ = forward_chunked(model, wav[None], torch.tensor([wav.numel()]), ["context"])
        stored = sets["ctx"].load(utt.id)
        assert stored.dtype == np.float32 and stored.shape == (sets["ctx"].num_frames[utt.id], 16)
        np.testing.assert_allclose(stored, expected["context"][0].numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("file_format", ["npy", "npz"])
def test_extract_resumes_and_refuses_other_sources(tiny_corpus, tmp_path, file_format):
    model = make_model("no_context")
    utterances, _ = select_utterances(tiny_corpus, progress=False)
    out = tmp_path / "feats"
    run = ExtractOptions(dtype="float16", file_format=file_format, progress=False)
    first = extract(model, utterances, out, ["encoder"], {"run": 1}, run)["encoder"]
    assert first.load(utterances[0].id).dtype == np.float16
    # An interrupted run: one array and the index are missing.
    victim, kept = first.paths[utterances[1].id], first.paths[utterances[2].id]
    victim.unlink()
    (out / "encoder" / INDEX).unlink()
    with pytest.raises(FeatureError, match="did not finish"):
        FeatureSet(out / "encoder")
    mtime = kept.stat().st_mtime_ns
    again = extract(model, utterances, out, ["encoder"], {"run": 1}, run)["encoder"]
    assert victim.is_file() and kept.stat().st_mtime_ns == mtime
    assert again.num_frames == first.num_frames
    with pytest.raises(FeatureError, match="other settings.*source"):
        extract(model, utterances, out, ["encoder"], {"run": 2}, run)
    with pytest.raises(FeatureError, match="dtype"):
        extract(model, utterances, out, ["encoder"], {"run": 1}, dataclasses.replace(run, dtype="float32"))
    with pytest.raises(FeatureError, match="format"):
        extract(model, utterances, out, ["encoder"], {"run": 1},
                dataclasses.replace(run, file_format="npz" if file_format == "npy" else "npy"))
    assert json.loads((out / "encoder" / "meta.json").read_text())["source"] == {"run": 1}
    assert not list(out.rglob(".*.tmp*"))  # no temporary file survives


def test_extract_rejects_bad_requests(tiny_corpus, tmp_path):
    model = make_model("transformer")
    utterances, _ = select_utterances(tiny_corpus, progress=False)
    out = tmp_path / "out"
    with pytest.raises(FeatureError, match="unknown layer"):
        extract(model, utterances, out, ["context_9"], options=QUIET)
    with pytest.raises(FeatureError, match="chunk"):
        extract(model, utterances, out, ["context"], options=ExtractOptions(chunk_seconds=0.5, progress=False))
    with pytest.raises(FeatureError, match="dtype"):
        extract(model, utterances, out, ["context"], options=ExtractOptions(dtype="int8", progress=False))
    with pytest.raises(FeatureError, match="format"):
        extract(model, utterances, out, ["context"], options=ExtractOptions(file_format="h5", progress=False))
    assert not out.exists()


def test_select_utterances_keeps_listed_ids(tiny_corpus, tmp_path):
    everything, _ = select_utterances(tiny_corpus, progress=False)
    listed = tmp_path / "split.txt"
    listed.write_text(f"{everything[3].id}\n{everything[0].id}\n")
    chosen, _ = select_utterances(tiny_corpus, [listed], progress=False)
    assert [u.id for u in chosen] == [everything[0].id, everything[3].id]
    listed.write_text("1-2-3\n")
    with pytest.raises(FeatureError, match="1-2-3"):
        select_utterances(tiny_corpus, [listed], progress=False)


def test_feature_set_checks_array_shapes(tiny_corpus, tmp_path):
    utterances, _ = select_utterances(tiny_corpus, progress=False)
    features = extract(build_baseline("logmel"), utterances[:2], tmp_path, {"logmel": "encoder"},
                       options=QUIET)["logmel"]
    np.save(features.paths[utterances[0].id], np.zeros((3, 80), dtype=np.float32))
    with pytest.raises(FeatureError, match="shape"):
        features.load(utterances[0].id)
    with pytest.raises(FeatureError, match="not a feature folder"):
        FeatureSet(tmp_path / "nothing")


@pytest.mark.parametrize("relative", ["", "../x.npy", "a/../../x.npy", "/etc/x.npy", "a/b/.."])
def test_feature_path_refuses_what_would_leave_the_layer_folder(tmp_path, relative):
    with pytest.raises(FeatureError, match=r"utt-7.*outside") as error:
        feature_path(tmp_path / "context", relative, "utt-7")
    assert repr(relative) in str(error.value)


@pytest.mark.parametrize("relative", ["x.npy", "a/b/x.npz", "./a/x.npy", "a..b/x.npy"])
def test_feature_path_keeps_paths_below_the_layer_folder(tmp_path, relative):
    path = feature_path(tmp_path / "context", relative, "u")
    assert (tmp_path / "context") in path.parents


def test_relative_paths_mirror_the_root_or_the_common_parent(tiny_corpus):
    utterances, _ = select_utterances(tiny_corpus, progress=False)
    by_corpus = relative_paths(utterances, tiny_corpus, "npz")
    by_parent = relative_paths(utterances)
    for u in utterances:
        assert by_corpus[u.id] == Path(u.path).relative_to(tiny_corpus.resolve()).with_suffix(".npz")
        # Without a root: relative to the common parent folder (here train-clean-100).
        assert by_parent[u.id] == by_corpus[u.id].relative_to("train-clean-100").with_suffix(".npy")
    twins = [utterances[0], type(utterances[0])("other", str(Path(utterances[0].path).with_suffix(".wav")), "s", 1, 1)]
    with pytest.raises(FeatureError, match="share"):
        relative_paths(twins)


def prepared_manifest(tiny_corpus: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """``tmp_path/lists/all.tsv`` listing the tiny corpus; returns it and its lines."""
    manifest = tmp_path / "lists" / "all.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(manifest)]) == 0
    return manifest, manifest.read_text().splitlines()


@pytest.mark.parametrize("bad_id, bad_path", [
    ("../../escaped", None),  # the id: refused when the manifest is read
    (None, "../corpus/train-clean-100/19/191/../../../../escaped.flac"),  # the path: refused by extract
    ("../escaped", "../corpus/train-clean-100/19/191/../../../../escaped.flac"),
])
def test_extract_refuses_a_manifest_entry_that_would_escape_out(tiny_corpus, tmp_path, capsys, bad_id, bad_path):
    manifest, (header, *rows) = prepared_manifest(tiny_corpus, tmp_path)
    # Relative paths, as a hand-written manifest may have them (relative to the manifest's folder).
    rows = [row.replace(str(tiny_corpus.resolve()), "../corpus") for row in rows]
    cols = rows[0].split("\t")
    if bad_path:
        (tmp_path / "escaped.flac").write_bytes(next(tiny_corpus.rglob("*.flac")).read_bytes())
    rows[0] = "\t".join([bad_id or cols[0], bad_path or cols[1], *cols[2:]])
    manifest.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "work" / "features"
    capsys.readouterr()
    code = main(["extract", "--baseline", "mfcc", "--data", str(manifest), "--out", str(out), "--num-workers", "0",
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (bad_id or cols[0]) in err and ".." in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".npy", ".npz", ".tsv", ".json")]
    assert all(out in p.parents or p.parent == manifest.parent for p in written)
    assert not list(out.rglob("*.np*"))


def test_extract_skips_files_that_fail_to_decode(tiny_corpus, tmp_path, capsys):
    manifest, _ = prepared_manifest(tiny_corpus, tmp_path)
    utterances, _ = select_utterances(manifest, progress=False)
    gone, truncated = utterances[4], utterances[7]
    Path(gone.path).unlink()  # deleted after the manifest was made
    Path(truncated.path).write_bytes(Path(truncated.path).read_bytes()[:40])  # cut inside the header
    out = tmp_path / "features"
    capsys.readouterr()
    assert main(["extract", "--baseline", "logmel", "--data", str(manifest), "--out", str(out),
                 "--batch-size", "3", "--num-workers", "0", "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert gone.id in captured.err and truncated.id in captured.err
    assert f"extracted {len(utterances) - 2} of {len(utterances)} utterances; 2 failed" in captured.out
    features = FeatureSet(out / "logmel")
    assert sorted(features.num_frames) == sorted(u.id for u in utterances if u not in (gone, truncated))
    assert [row["id"] for row in read_index(out / "logmel")] == list(features.num_frames)
    assert len(list((out / "logmel").rglob("*.npy"))) == len(utterances) - 2


def test_progress_bar_shows_the_real_time_factor(tiny_corpus, tmp_path, capsys):
    utterances, _ = select_utterances(tiny_corpus, progress=False)
    extract(build_baseline("logmel"), utterances[:4], tmp_path, {"logmel": "encoder"},
            options=ExtractOptions(batch_size=2))
    assert "x real time" in capsys.readouterr().err

"""Discrete units: k-means, the saved model, assignment and the ZeroSpeech format, purity and PNMI, the CLI."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from audiossl.cli import main
from audiossl.extract import ExtractOptions, FeatureSet, extract, select_utterances
from audiossl.models.baselines import build_baseline
from audiossl.probes.unit_quality import contingency, pnmi, unit_quality
from audiossl.units.assign import assign_units, open_onehot, parse_line, read_quantized, write_quantized
from audiossl.units.fit import FitSettings, UnitsError, fit_units, sample_frames, utterance_normalized
from audiossl.units.kmeans import KMeansSettings, assign, kmeans_plusplus, minibatch_kmeans, restart_dead_centres

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


def blobs(num_clusters: int, per_cluster: int, dim: int, seed: int, spread: float = 0.05):
    """Gaussian blobs around centres far apart (at least 1 apart; the noise is ``spread`` per dimension)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)) * 4
    while min(np.linalg.norm(a - b) for a, b in itertools.combinations(centres, 2)) < 1.0:
        centres = rng.standard_normal((num_clusters, dim)) * 4
    truth = rng.integers(0, num_clusters, num_clusters * per_cluster)
    truth[:num_clusters] = np.arange(num_clusters)  # every cluster has points
    points = centres[truth] + spread * rng.standard_normal((len(truth), dim))
    return torch.from_numpy(points.astype(np.float32)), truth, centres


# ---- k-means

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_well_separated_clusters(seed):
    points, truth, centres = blobs(8, 300, 6, seed)
    result = minibatch_kmeans(points, KMeansSettings(k=8, batch_size=256, seed=seed))
    found, _ = assign(points, result.centroids)
    found = found.numpy()
    # The same partition up to renaming: every true cluster maps to one found cluster and back.
    pairs = set(zip(truth.tolist(), found.tolist()))
    assert len(pairs) == 8 and len({t for t, _ in pairs}) == 8 and len({f for _, f in pairs}) == 8
    for t, f in pairs:
        assert np.linalg.norm(result.centroids[f].numpy() - centres[t]) < 0.05
    assert sorted(result.sizes) == sorted(np.bincount(truth).tolist())
    assert result.inertia == pytest.approx(float(((points.numpy() - centres[truth]) ** 2).sum(1).mean()), rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_on_cuda_recovers_the_clusters_and_assigns_as_the_cpu():
    points, truth, _ = blobs(8, 300, 6, seed=0)
    result = minibatch_kmeans(points.cuda(), KMeansSettings(k=8, batch_size=256))
    found, _ = assign(points.cuda(), result.centroids)
    assert len(set(zip(truth.tolist(), found.cpu().tolist()))) == 8
    assert torch.equal(found.cpu(), assign(points, result.centroids.cpu())[0])


def test_kmeans_is_seeded():
    points, _, _ = blobs(6, 200, 4, seed=3, spread=1.5)  # overlapping: the answer depends on the draws
    settings = KMeansSettings(k=10, batch_size=100, seed=7)
    first, again = minibatch_kmeans(points, settings), minibatch_kmeans(points, settings)
    assert torch.equal(first.centroids, again.centroids) and first.history == again.history
    other = minibatch_kmeans(points, KMeansSettings(k=10, batch_size=100, seed=8))
    assert not torch.equal(first.centroids, other.centroids)


def test_kmeans_plusplus_starts_one_centre_per_separated_cluster():
    points, truth, _ = blobs(10, 50, 5, seed=4)
    starts = kmeans_plusplus(points, 10, torch.Generator().manual_seed(0))
    chosen = [int(np.flatnonzero((points.numpy() == s.numpy()).all(1))[0]) for s in starts]
    assert sorted(truth[chosen].tolist()) == list(range(10))


def naive_lloyd_inertia(points: torch.Tensor, k: int, restarts: int = 3) -> float:
    """The best of a few runs of Lloyd's algorithm from k-means++ starts, to convergence."""
    best = math.inf
    for seed in range(restarts):
        g = torch.Generator().manual_seed(seed)
        centroids = kmeans_plusplus(points, k, g)
        for _ in range(100):
            labels = torch.cdist(points.double(), centroids.double()).argmin(1)
            moved = torch.stack([points[labels == c].mean(0) if (labels == c).any() else centroids[c]
                                 for c in range(k)])
            if torch.equal(moved, centroids):
                break
            centroids = moved
        best = min(best, float(torch.cdist(points.double(), centroids.double()).min(1).values.pow(2).mean()))
    return best


def test_minibatch_kmeans_comes_close_to_lloyd_on_overlapping_clusters():
    points, _, _ = blobs(5, 300, 4, seed=5, spread=2.0)
    result = minibatch_kmeans(points, KMeansSettings(k=12, batch_size=200, seed=1))
    assert result.inertia <= 1.05 * naive_lloyd_inertia(points, 12)


def test_assign_is_the_nearest_centroid():
    rng = np.random.default_rng(6)
    points, centroids = (torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in ((500, 7), (13, 7)))
    labels, distances = assign(points, centroids, chunk=64)
    exact = torch.cdist(points.double(), centroids.double())
    assert torch.equal(labels, exact.argmin(1))
    torch.testing.assert_close(distances.double(), exact.min(1).values.pow(2), rtol=1e-4, atol=1e-4)


def test_kmeans_refuses_fewer_distinct_points_than_k():
    points = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).repeat(50, 1)
    with pytest.raises(ValueError, match="fewer than k=3 distinct"):
        minibatch_kmeans(points, KMeansSettings(k=3))


def test_a_dead_centre_restarts_on_a_point_far_from_every_centre():
    # Centre 1 lies where no point is; the points sit near centre 0 and, a few, far from both.
    rng = np.random.default_rng(7)
    near = rng.standard_normal((990, 2)) * 0.01
    far = rng.standard_normal((10, 2)) * 0.01 + 50.0
    points = torch.from_numpy(np.concatenate([near, far]).astype(np.float32))
    centroids = torch.tensor([[0.0, 0.0], [-1000.0, 1000.0]])
    counts = torch.tensor([990.0, 0.0], dtype=torch.float64)
    restart_dead_centres(points, centroids, counts, torch.tensor([1]), torch.Generator().manual_seed(0))
    assert any(torch.equal(centroids[1], p) for p in points[990:])  # d^2 2500 against 1e-4: a far point
    assert centroids[0].tolist() == [0.0, 0.0] and counts.tolist() == [990.0, 990.0]


# ---- unit quality

def test_pnmi_and_purities_of_a_small_table_match_a_hand_computation():
    # 2 phones x 3 units: phone 0 -> units (3, 1, 0) frames, phone 1 -> units (1, 1, 2); 8 frames.
    counts = np.array([[3, 1, 0], [1, 1, 2]])
    p_y = [4 / 8, 4 / 8]
    p_z = [4 / 8, 2 / 8, 2 / 8]
    joint = {(0, 0): 3 / 8, (0, 1): 1 / 8, (1, 0): 1 / 8, (1, 1): 1 / 8, (1, 2): 2 / 8}
    information = sum(p * math.log(p / (p_y[y] * p_z[z])) for (y, z), p in joint.items())
    phone_entropy = -sum(p * math.log(p) for p in p_y)  # ln 2
    quality = unit_quality(counts)
    assert quality["pnmi"] == pytest.approx(information / phone_entropy, rel=1e-12)
    # I = 3/8 ln(3/2) + 1/8 ln(1/2) + 2/8 ln 2 = 3/8 ln 3 - 1/4 ln 2, so PNMI = 3/8 log2(3) - 1/4.
    assert quality["pnmi"] == pytest.approx(3 / 8 * math.log2(3) - 1 / 4, rel=1e-12)
    assert quality["phone_purity"] == pytest.approx((3 + 1 + 2) / 8)  # each unit's most frequent phone
    assert quality["cluster_purity"] == pytest.approx((3 + 2) / 8)  # each phone's most frequent unit
    assert quality["frames"] == 8 and quality["units_used"] == 3


def test_pnmi_is_zero_for_independent_units_and_one_for_units_equal_to_phones():
    rng = np.random.default_rng(8)
    phones = rng.integers(0, 5, 4000)
    assert pnmi(np.outer([10, 20, 30, 40], [1, 2, 3, 4, 5, 6])) == pytest.approx(0.0, abs=1e-12)  # p(y) p(z)
    independent = contingency({"u": rng.integers(0, 7, 4000)}, {"u": phones}, 5, 7)
    assert pnmi(independent) < 0.01
    assert pnmi(contingency({"u": phones}, {"u": phones}, 5, 5)) == pytest.approx(1.0)
    assert pnmi(contingency({"u": (phones + 2) % 5}, {"u": phones}, 5, 5)) == pytest.approx(1.0)  # renamed
    finer = contingency({"u": phones * 3 + rng.integers(0, 3, 4000)}, {"u": phones}, 5, 15)  # units split phones
    assert pnmi(finer) == pytest.approx(1.0) and unit_quality(finer)["phone_purity"] == pytest.approx(1.0)
    assert unit_quality(finer)["cluster_purity"] < 0.5


def test_contingency_counts_each_frame_once():
    counts = contingency({"a": np.array([0, 1, 1]), "b": np.array([2])}, {"a": np.array([1, 1, 0]), "b": np.array([0])},
                         2, 3)
    np.testing.assert_array_equal(counts, [[0, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="'a': 3 units, 2 labels"):
        contingency({"a": np.array([0, 1, 1])}, {"a": np.array([0, 1])}, 2, 3)


# ---- the ZeroSpeech text format

def test_zerospeech_text_format_round_trips(tmp_path):
    sequences = {"1272-128104-0000": np.array([3, 3, 17, 0, 49]), "dir/take 1": np.array([7]),
                 "empty": np.zeros(0, dtype=np.int64)}
    path = tmp_path / "quantized_outputs.txt"
    write_quantized(path, sequences)
    assert path.read_text().splitlines()[0] == "1272-128104-0000\t3,3,17,0,49"
    back = read_quantized(path)
    assert list(back) == list(sequences)
    for utt_id, units in sequences.items():
        np.testing.assert_array_equal(back[utt_id], units)
        assert back[utt_id].dtype == np.int64
    # The ZeroSpeech baseline's quantize_audio.py writes no final line break.
    path.write_text("a\t1,2\nb\t3")
    assert {k: v.tolist() for k, v in read_quantized(path).items()} == {"a": [1, 2], "b": [3]}


@pytest.mark.parametrize("text, message", [("a 1,2,3\n", "line 1: expected '<utt_id><TAB>3,3,17,...'"),
                                           ("a\t1,2\nb\t1,x\n", ":2: utterance 'b' has unit 'x'"),
                                           ("a\t1,-2\n", "unit '-2'"),
                                           ("a\t1\na\t2\n", ":2: utterance 'a' is listed twice")])
def test_malformed_units_files_are_named_with_the_line(tmp_path, text, message):
    path = tmp_path / "units.txt"
    path.write_text(text)
    with pytest.raises(UnitsError, match=message.replace("line 1", f"{path}:1") if "line 1" in message else message):
        read_quantized(path)
    assert parse_line("x\t4,5\r\n", "here")[1].tolist() == [4, 5]


# ---- fit and assign on a features folder

FAST = FitSettings(KMeansSettings(k=8, batch_size=256), max_frames=600, standardize="global")


def test_frame_sample_is_seeded_uniform_and_without_replacement(mfcc_features):
    features = FeatureSet(mfcc_features / "mfcc")
    ids = list(features.num_frames)
    every = np.concatenate([features.load(u) for u in ids])
    sample = sample_frames(features, ids, 500, seed=3, progress=False)
    assert sample.shape == (500, features.dim)
    rows = {row.tobytes(): i for i, row in enumerate(every)}
    positions = [rows[row.tobytes()] for row in sample]
    assert len(set(positions)) == 500 and positions == sorted(positions)  # distinct frames, in corpus order
    np.testing.assert_array_equal(sample, sample_frames(features, ids, 500, seed=3, progress=False))
    assert not np.array_equal(sample, sample_frames(features, ids, 500, seed=4, progress=False))
    np.testing.assert_array_equal(sample_frames(features, ids, 0, seed=3, progress=False), every)


def test_fit_saves_a_self_describing_model_and_keeps_it(mfcc_features, tmp_path):
    model, fitted = fit_units(mfcc_features, tmp_path / "units", "mfcc", FAST, progress=False)
    assert fitted
    record = json.loads((tmp_path / "units" / "kmeans.json").read_text())
    assert (record["k"], record["dim"], record["layer"], record["source"]) == (8, 39, "mfcc", {"baseline": "mfcc"})
    assert record["standardized"] == "global" and record["fit"]["frames_used"] == 600 and len(model.fit_ids) == 12
    sample = sample_frames(FeatureSet(mfcc_features / "mfcc"), model.fit_ids, 600, seed=1, progress=False)
    np.testing.assert_allclose(model.mean, sample.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.std, sample.std(0), rtol=1e-4)
    again, fitted = fit_units(mfcc_features, tmp_path / "units", "mfcc", FAST, progress=False)
    assert not fitted and np.array_equal(again.centroids, model.centroids)
    other = FitSettings(KMeansSettings(k=9, batch_size=256), max_frames=600, standardize="global")
    with pytest.raises(UnitsError, match=r"fitted with other settings \(k\)"):
        fit_units(mfcc_features, tmp_path / "units", "mfcc", other, progress=False)
    raw, _ = fit_units(mfcc_features, tmp_path / "raw", "mfcc", FitSettings(FAST.kmeans, 600, standardize=False),
                       progress=False)
    assert raw.mean is None and not np.array_equal(raw.assign(sample), model.assign(sample))


def test_per_utterance_standardization_fits_and_assigns_on_each_utterances_own_statistics(mfcc_features, tmp_path):
    features = FeatureSet(mfcc_features / "mfcc")
    one = features.load(next(iter(features.num_frames))).astype(np.float64)
    normalized = utterance_normalized(one)
    np.testing.assert_allclose(normalized.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normalized.std(0)[one.std(0) > 1e-3], 1, rtol=1e-4)
    constant = utterance_normalized(np.full((5, 3), 7.0))
    assert np.array_equal(constant, np.zeros((5, 3), np.float32))  # centred, not divided by zero
    settings = FitSettings(FAST.kmeans, 600)  # the default
    assert settings.standardize == "utterance"
    model, _ = fit_units(mfcc_features, tmp_path / "utt", "mfcc", settings, progress=False)
    record = json.loads((tmp_path / "utt" / "kmeans.json").read_text())
    assert record["settings"]["standardize"] == "utterance" and model.mean is None
    sample = sample_frames(features, model.fit_ids, 600, seed=1, progress=False, per_utterance=utterance_normalized)
    assert np.isfinite(sample).all()
    assert np.abs(sample.mean(0)).max() < 0.2  # each utterance centred, so the sample is about centred too
    # assigning an utterance shifted and scaled as a whole gives the same units: its own statistics absorb it
    np.testing.assert_array_equal(model.assign(one * 3.0 + 5.0), model.assign(one))
    global_model, _ = fit_units(mfcc_features, tmp_path / "global", "mfcc", FAST, progress=False)
    assert not np.array_equal(global_model.assign(one * 3.0 + 5.0), global_model.assign(one))
    with pytest.raises(ValueError, match="standardize must be one of global, utterance, none"):
        FitSettings(standardize="speaker")
    # a model recorded with the old boolean reads as global, and the same settings keep it
    old = json.loads((tmp_path / "global" / "kmeans.json").read_text())
    old["settings"]["standardize"] = True
    (tmp_path / "global" / "kmeans.json").write_text(json.dumps(old))
    again, fitted = fit_units(mfcc_features, tmp_path / "global", "mfcc", FAST, progress=False)
    assert not fitted and again.standardize == "global"


def read_outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("sources.tsv", ".lock")}


def test_assign_writes_units_deterministically_and_resumes(mfcc_features, tmp_path):
    model, _ = fit_units(mfcc_features, tmp_path / "units", "mfcc", FAST, progress=False)
    features = FeatureSet(mfcc_features / "mfcc")
    out = tmp_path / "assigned"
    done = assign_units(model, mfcc_features, out, progress=False)
    assert (done["utterances"], done["written"], done["reused"]) == (12, 12, 0)
    first = read_outputs(out)
    sequences = read_quantized(out / "quantized_outputs.txt")
    assert list(sequences) == list(features.num_frames)  # index order
    for utt_id, units in sequences.items():
        np.testing.assert_array_equal(units, model.assign(features.load(utt_id)))
        onehot = open_onehot(out).load(utt_id)
        assert onehot.dtype == np.float16 and onehot.shape == (len(units), 8)
        np.testing.assert_array_equal(onehot.argmax(1), units)
        np.testing.assert_array_equal(onehot.sum(1), 1)
    rel = features.paths["19-191-0000"].relative_to(features.folder).with_suffix(".txt")
    assert (out / "quantized_outputs" / rel).read_text() == (
        "19-191-0000\t" + ",".join(map(str, sequences["19-191-0000"])) + "\n")

    # Same input, same bytes; nothing redone.
    done = assign_units(model, mfcc_features, out, progress=False)
    assert (done["written"], done["reused"]) == (0, 12) and read_outputs(out) == first
    # An interrupted run: a units file lost, a one-hot array cut short, the combined file and index not written;
    # and one features file made again since.
    (out / "quantized_outputs" / rel).unlink()
    cut = open_onehot(out).paths["26-261-0001"]
    cut.write_bytes(cut.read_bytes()[:100])
    (out / "quantized_outputs.txt").unlink()
    (out / "onehot" / "index.tsv").unlink()
    changed = features.paths["103-1031-0002"]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    done = assign_units(model, mfcc_features, out, progress=False)
    assert (done["written"], done["reused"]) == (3, 9)
    assert read_outputs(out) == first


def test_assign_refuses_what_does_not_fit(mfcc_features, tmp_path, tiny_corpus):
    model, _ = fit_units(mfcc_features, tmp_path / "units", "mfcc", FAST, progress=False)
    assign_units(model, mfcc_features, tmp_path / "assigned", onehot="none", progress=False)
    assert not (tmp_path / "assigned" / "onehot").exists()
    other, _ = fit_units(mfcc_features, tmp_path / "units9", "mfcc",
                         FitSettings(KMeansSettings(k=9, batch_size=256), max_frames=600), progress=False)
    with pytest.raises(UnitsError, match="assigned with another model or settings"):
        assign_units(other, mfcc_features, tmp_path / "assigned", onehot="none", progress=False)
    utterances, _ = select_utterances(tiny_corpus, progress=False)
    extract(build_baseline("logmel"), utterances, tmp_path / "logmel", {"mfcc": "encoder"}, {"baseline": "logmel"},
            ExtractOptions(progress=False))  # 80-dim, and another source
    with pytest.raises(UnitsError, match="80-dim features; the units model .* clusters 39-dim mfcc frames"):
        assign_units(model, tmp_path / "logmel", tmp_path / "x", progress=False)


# ---- the command line

@pytest.fixture(scope="module")
def demo_mfcc(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_features")
    utterances, _ = select_utterances(DEMO, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    extract(build_baseline("mfcc"), utterances, out, {"mfcc": "encoder"}, {"baseline": "mfcc"},
            ExtractOptions(progress=False))
    torch.set_num_threads(threads)
    return out


def test_cli_fit_assign_probe_units_and_abx_agree(demo_mfcc, tmp_path, capsys):
    units, assigned, probe = tmp_path / "units", tmp_path / "units" / "all", tmp_path / "probe_units"
    labels = ["--alignments", str(DEMO / "converted_aligned_phones.txt"), "--phones", str(DEMO / "phones.txt"),
              "--split", str(DEMO / "test_split.txt")]
    common = ["--device", "cpu", "--no-progress"]
    assert main(["units", "fit", "--features", str(demo_mfcc), "--layer", "mfcc", "--k", "16", "--split",
                 str(DEMO / "train_split.txt"), "--out", str(units), "--max-frames", "20000", *common]) == 0
    assert "k=16 on 20,000 of 28,706 frames of 88 utterances" in capsys.readouterr().out
    assert main(["units", "assign", "--units", str(units), "--features", str(demo_mfcc), "--out", str(assigned),
                 *common]) == 0
    assert "112 utterances (0 kept from an earlier run, 112 written)" in capsys.readouterr().out
    assert main(["probe", "units", "--units", str(units), "--features", str(demo_mfcc), *labels, "--baselines",
                 "logmel", "context=none", "--out", str(probe), "--num-workers", "0", *common]) == 0
    printed = capsys.readouterr().out
    report = json.loads((probe / "metrics.json").read_text())
    assert (probe / "report.txt").read_text() in printed
    assert (report["task"], report["k"], report["utterances"]) == ("units", 16, 24)
    assert [(r["features"], r["role"]) for r in report["results"]] == [("mfcc", "model"), ("logmel", "baseline")]
    assert json.loads((probe / "kmeans_logmel" / "kmeans.json").read_text())["settings"]["k"] == 16
    # Measured: PNMI 0.29 (MFCC) and 0.36 (log-mel), phone purity 0.31 / 0.35. Units that carried no phone
    # information (one cluster, or random ones) give PNMI near 0 and the majority phone's share, 0.13.
    for row in report["results"]:
        assert row["pnmi"] > 0.2 and row["phone_purity"] > 0.25 and 0.3 < row["cluster_purity"] < 1
        assert 0 <= row["within"] < 0.5 and 0 <= row["across"] < 0.5
    # The one-hot features that assign wrote give probe abx the units probe's ABX figures.
    assert main(["probe", "abx", "--features", str(assigned), "--layer", "onehot", *labels, "--baselines", "none",
                 "context=none", "--out", str(tmp_path / "abx"), *common]) == 0
    (abx,) = json.loads((tmp_path / "abx" / "metrics.json").read_text())["results"]
    assert (abx["within"], abx["across"]) == (report["results"][0]["within"], report["results"][0]["across"])


@pytest.mark.parametrize("argv, message", [
    (["units", "fit", "--features", "{tmp}/nowhere", "--out", "{tmp}/u"], "not a feature folder"),
    (["units", "fit", "--features", "{feats}", "--layer", "mfcc", "--k", "0", "--out", "{tmp}/u"],
     "argument --k: expected a positive integer, got '0'"),  # refused while parsing: argparse's exit
    (["units", "assign", "--units", "{tmp}/none", "--features", "{feats}", "--out", "{tmp}/a"],
     "no units model (kmeans.json missing)"),
    (["units", "fit", "--features", "{feats}", "--layer", "mfcc", "--split", "{tmp}/missing.txt", "--out", "{tmp}/u"],
     "missing.txt: No such file or directory"),
])
def test_cli_user_errors_are_one_line(demo_mfcc, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, feats=demo_mfcc) for a in argv]
    try:
        code = main([*argv, "--device", "cpu", "--no-progress"])
    except SystemExit as e:  # a bad option, refused by the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("audiossl units") and message in err and err.count("\n") == 1

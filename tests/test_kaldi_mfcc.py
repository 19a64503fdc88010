"""The kaldi-mfcc floor: Kaldi's MFCC + deltas + per-utterance CMVN, as s3prl's mfcc upstream, on 10 ms frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiossl.cli import main
from audiossl.extract import FeatureSet
from audiossl.models.baselines import BASELINES, KaldiMFCCFrontend, build_baseline

from conftest import import_reference

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


def test_kaldi_mfcc_frames_dims_and_cmvn():
    torch.manual_seed(0)
    lengths = torch.tensor([16000, 16079, 16080, 16159, 1000])  # n % 160 below and above half a hop
    wavs = 0.1 * torch.randn(len(lengths), int(lengths.max()))
    frontend = KaldiMFCCFrontend()
    feats, out_lengths = frontend(wavs, lengths)
    assert frontend.out_dim == 39 and feats.shape == (5, 16159 // 160, 39)
    assert out_lengths.tolist() == (lengths // 160).tolist()  # the other floors' frame count
    for row, length in enumerate(lengths.tolist()):
        alone = frontend.utterance(wavs[row, :length])  # a padded batch equals per-utterance runs
        frames = length // 160
        torch.testing.assert_close(feats[row, :frames], alone)
        assert float(feats[row, frames:].abs().sum()) == 0.0  # padding stays zero
        # Per-utterance CMVN: every dimension has mean 0 and (unbiased) standard deviation 1.
        torch.testing.assert_close(alone.mean(0), torch.zeros(39), atol=1e-4, rtol=0)
        torch.testing.assert_close(alone.std(0), torch.ones(39), atol=1e-3, rtol=0)
    assert "kaldi-mfcc" in BASELINES
    model = build_baseline("kaldi-mfcc")
    layers, _ = model.extract_features(wavs[:1, :16000], lengths[:1], layers=("encoder",))
    assert layers["encoder"][0].shape == (1, 100, 39)


def test_kaldi_mfcc_equals_s3prls_mfcc_upstream():
    extracter = import_reference("s3prl.upstream.baseline.extracter", "the [s3prl] extra")
    config = {"kaldi": {"feat_type": "mfcc",  # s3prl's upstream/baseline/mfcc.yaml, frames centred as ours
                        "mfcc": {"num_ceps": 13, "frame_length": 25.0, "frame_shift": 10.0, "snip_edges": False}},
              "delta": {"order": 2, "win_length": 5}, "cmvn": {"use_cmvn": True}}
    s3prl, dim, _ = extracter.get_extracter(config)
    wav = 0.1 * torch.randn(32040, generator=torch.Generator().manual_seed(1))  # n % 160 < 80: same frame count
    ours = KaldiMFCCFrontend().utterance(wav)
    assert dim == 39
    torch.testing.assert_close(ours, s3prl(wav), atol=1e-5, rtol=1e-5)


def test_extract_and_probe_take_kaldi_mfcc(tmp_path, tiny_corpus):
    out = tmp_path / "feats"
    assert main(["extract", "--baseline", "kaldi-mfcc", "--data", str(tiny_corpus), "--out", str(out),
                 "--no-progress", "--num-workers", "0", "--device", "cpu"]) == 0
    features = FeatureSet(out / "kaldi-mfcc")
    assert features.dim == 39 and features.frame_rate == 100.0
    for utt in features.utterances:
        assert features.num_frames[utt.id] == utt.num_samples // 160
    x = np.concatenate([features.load(u) for u in features.num_frames])
    assert np.isfinite(x).all()
    assert main(["extract", "--baseline", "kaldi-mfcc", "--data", str(tiny_corpus), "--out", str(tmp_path / "c"),
                 "--chunk-seconds", "0.5", "--no-progress", "--num-workers", "0"]) == 2  # CMVN needs whole files

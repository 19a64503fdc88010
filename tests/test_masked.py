"""The masked family: wav2vec 2.0 and HuBERT (+ BEST-RQ targets). The mask, what the context may see, the
quantizer, each loss against a naive float64 reference, the targets' alignment, and training from the CLI
with an exact resume."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audiossl.checkpoint import CheckpointError, load_checkpoint
from audiossl.cli import main
from audiossl.config import ConfigError, build_config
from audiossl.objectives.hubert import unit_logits
from audiossl.objectives.hubert_targets import RandomProjectionTargets, TargetsError, UnitTargets, window_shift
from audiossl.objectives.masking import span_mask
from audiossl.objectives.quantizer import ProductQuantizer, annealed_temperature, perplexity
from audiossl.objectives.w2v2 import contrastive_loss, gather_masked, sample_negatives
from audiossl.train import train
from audiossl.train.log import TRAIN_LOG
from audiossl.train.loop import build_pretrainer
from audiossl.train.state import init_model

from conftest import build_tiny, package_env

WAVE = {"encoder_channels": 16, "context": "transformer", "context_causal": False, "context_dim": 16,
        "context_layers": 2, "context_heads": 2, "context_ff_dim": 32, "context_input_norm": True}
TINY = {
    "w2v2": {**WAVE, "objective": "w2v2", "w2v2_mask_prob": 0.2, "w2v2_mask_span": 4, "w2v2_negatives": 5,
             "w2v2_codebook_groups": 2, "w2v2_codebook_entries": 8, "w2v2_final_dim": 8},
    "hubert": {**WAVE, "objective": "hubert", "hubert_targets": "random_projection", "hubert_num_units": 32,
               "hubert_mask_prob": 0.2, "hubert_mask_span": 4, "hubert_final_dim": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads cost more than they give


def build(name: str, **overrides):
    return build_tiny({**TINY[name], **overrides})


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-d bool tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.long), row.long(), torch.zeros(1, dtype=torch.long)])
    edges = padded.diff()
    return ((edges == -1).nonzero()[:, 0] - (edges == 1).nonzero()[:, 0]).tolist()


# --- the mask ------------------------------------------------------------------------------------------------

def test_spans_start_at_the_start_probability_and_are_m_frames_long():
    torch.manual_seed(0)
    lengths = torch.full((400,), 1000)
    mask = span_mask(lengths, 1000, 0.002, 10)  # rare spans: overlaps are rare too
    lengths_of_runs = [n for row in mask for n in runs(row)]
    assert min(lengths_of_runs) >= 10 and np.mean(np.array(lengths_of_runs) == 10) > 0.95
    assert abs(len(lengths_of_runs) / 400 - 2.0) < 0.2  # p L = 2 starts per row, nearly all separate
    # The paper's p = 0.065, M = 10: about 49 % of the frames covered (spans overlap).
    covered = span_mask(torch.full((400,), 500), 500, 0.065, 10).float().mean()
    assert 0.46 < float(covered) < 0.52


def test_every_sequence_gets_a_span_inside_its_length():
    torch.manual_seed(1)
    lengths = torch.tensor([50, 12, 7, 1, 30])
    for _ in range(50):
        mask = span_mask(lengths, 50, 0.001, 10)
        for row, n in zip(mask, lengths.tolist()):
            assert row[:n].any() and not row[n:].any()
            assert all(r >= min(10, n) for r in runs(row))
    assert span_mask(lengths, 50, 0.001, 10)[2, :7].all()  # shorter than a span: masked whole


def test_the_context_never_sees_a_masked_frames_features():
    cfg, model, objective = build("w2v2")
    model.eval()
    masking = objective.masking
    z = torch.randn(2, 30, model.encoder_dim)
    lengths = torch.tensor([30, 25])
    mask = span_mask(lengths, 30, 0.1, 4)
    before, _ = masking.contextualize(model, z, lengths, mask)
    changed = torch.where(mask[..., None], torch.randn_like(z) * 100, z)
    after, _ = masking.contextualize(model, changed, lengths, mask)
    assert mask.any() and torch.equal(before[-1], after[-1])
    unmasked = torch.where(mask[..., None], z, z + 1.0)
    assert not torch.equal(masking.contextualize(model, unmasked, lengths, mask)[0][-1], before[-1])


def test_under_augment_past_hubert_reads_the_augmented_audio_and_targets_the_clean_audio():
    cfg, model, objective = build("hubert")  # BEST-RQ targets: computed from the batch's audio
    model.eval()
    wavs = torch.randn(2, 4000)
    noisy = wavs + 0.5 * torch.randn_like(wavs)
    lengths = torch.tensor([4000, 3600])
    clean = {"wavs": wavs, "lengths": lengths}
    past = {**clean, "augmented_wavs": noisy}
    z, _ = objective.masking.encode(model, past)
    assert torch.allclose(z, model.encode(noisy, lengths)[0])
    frames = z.shape[1]
    targets = objective.targets(clean, frames, z.device)
    assert torch.equal(objective.targets(past, frames, z.device), targets)
    assert not torch.equal(objective.targets({"wavs": noisy, "lengths": lengths}, frames, z.device), targets)


def test_the_input_norm_keeps_the_feature_penalty_from_starving_the_context():
    # fairseq's layer norm after the feature penalty: the context reads each frame's z whatever its scale, so
    # the penalty can shrink z without shrinking what the context sees (without the norm it zeroed z).
    for preset in ("w2v2_paper", "hubert_paper"):
        assert build_config(overrides={"preset": preset}).model.context_input_norm
    cfg, model, objective = build("hubert")
    model.eval()
    z, lengths = torch.randn(2, 30, model.encoder_dim), torch.tensor([30, 25])
    full, shrunk = model.contextualize(z, lengths)[0][-1], model.contextualize(z * 0.1, lengths)[0][-1]
    assert torch.allclose(full, shrunk, atol=1e-2)
    plain = build("hubert", context_input_norm=False)[1].eval()
    assert not torch.allclose(plain.contextualize(z, lengths)[0][-1], plain.contextualize(z * 0.1, lengths)[0][-1],
                              atol=1e-2)


def test_masked_objectives_refuse_a_causal_or_recurrent_context():
    for name in TINY:
        with pytest.raises(ConfigError, match="bidirectional Transformer"):
            build_config(overrides={**TINY[name], "context_causal": True})
        with pytest.raises(ConfigError, match="bidirectional Transformer"):
            build_config(overrides={**TINY[name], "context": "gru"})


# --- the quantizer -------------------------------------------------------------------------------------------

def test_perplexity_of_a_uniform_code_is_v_per_group():
    probs = torch.full((7, 2, 320), 1 / 320)
    assert torch.allclose(perplexity(probs), torch.tensor([320.0, 320.0]), rtol=1e-4)
    onehot = F.one_hot(torch.zeros(7, 2, dtype=torch.long), 320).float()
    assert torch.allclose(perplexity(onehot), torch.ones(2), atol=1e-4)
    quantizer = ProductQuantizer(4, 2, 320, 8)
    assert float(quantizer.diversity_loss(probs)) == pytest.approx(0.0, abs=1e-4)


def test_quantizer_picks_codebook_entries_with_straight_through_gradients():
    torch.manual_seed(0)
    quantizer = ProductQuantizer(6, groups=2, entries=5, dim=8)
    x = torch.randn(3, 4, 6, requires_grad=True)
    q = quantizer(x, temperature=2.0)
    assert torch.equal(q.onehot.sum(-1), torch.ones(3, 4, 2))
    picked = q.onehot.argmax(-1)  # (B, T, G)
    expected = torch.cat([quantizer.codebook[g][picked[..., g]] for g in range(2)], dim=-1)
    assert torch.allclose(q.vectors, expected)
    (q.vectors * torch.randn_like(q.vectors)).sum().backward()
    assert x.grad.abs().sum() > 0 and quantizer.logits.weight.grad.abs().sum() > 0  # through the soft sample
    quantizer.eval()
    assert torch.equal(quantizer(x).onehot.argmax(-1), q.probs.argmax(-1))


def test_temperature_is_annealed_per_update_and_survives_resume():
    assert annealed_temperature(0) == 2.0 and annealed_temperature(10 ** 7) == 0.5
    assert annealed_temperature(1000) == pytest.approx(2.0 * 0.999995 ** 1000)
    cfg, model, objective = build("w2v2", w2v2_temp_decay=0.5, accumulate=2)
    batch = {"wavs": torch.randn(2, 3200) * 0.1, "lengths": torch.full((2,), 3200)}
    temps = [float(objective(model, batch)[1]["temperature"]) for _ in range(5)]
    assert temps == [2.0, 2.0, 1.0, 1.0, 0.5]
    fresh = build("w2v2", w2v2_temp_decay=0.5, accumulate=2)[2]
    fresh.load_state_dict(objective.state_dict())
    assert float(fresh.temperature()) == 0.5


# --- the losses against naive float64 references -------------------------------------------------------------

def naive_contrastive(x, y, mask, negatives, ids, kappa):
    """Frame by frame, float64: cosine to the positive and to each distractor, duplicates of the positive out."""
    losses, correct = [], []
    for b in range(x.shape[0]):
        where = mask[b].nonzero()[:, 0].tolist()
        for i, t in enumerate(where):
            pos = F.cosine_similarity(x[b, t], y[b, t], dim=0)
            scores = [pos]
            for j in negatives[b, i].tolist():
                u = where[j]
                assert j != i or len(where) == 1
                same = ids[b, u] == ids[b, t]
                scores.append(torch.tensor(-math.inf, dtype=x.dtype) if same else
                              F.cosine_similarity(x[b, t], y[b, u], dim=0))
            logits = torch.stack(scores) / kappa
            losses.append(-torch.log_softmax(logits, 0)[0])
            others = [s for s in scores[1:] if s > -math.inf]
            correct.append(float(bool(others) and pos > max(others)))  # nothing to tell apart: wrong
    return torch.stack(losses).mean(), sum(correct) / len(correct)


def test_contrastive_loss_equals_a_naive_reference():
    torch.manual_seed(0)
    x, y = torch.randn(3, 20, 6, dtype=torch.float64), torch.randn(3, 20, 6, dtype=torch.float64)
    ids = torch.randint(0, 6, (3, 20))  # repeated ids: some distractors equal the positive
    y = y[torch.arange(3)[:, None], ids]  # equal ids, equal targets
    mask = span_mask(torch.tensor([20, 16, 11]), 20, 0.15, 3)
    valid, xm, ym, idm = gather_masked(mask, x, y, ids)
    negatives = sample_negatives(valid, 7)
    for b in range(3):
        n = int(valid[b].sum())
        own = negatives[b, :n]
        assert (own < n).all() and (own != torch.arange(n)[:, None]).all()  # the row's others, never itself
    loss, accuracy = contrastive_loss(xm, ym, valid, negatives, idm, 0.1)
    expected, expected_accuracy = naive_contrastive(x, y, mask, negatives, ids, 0.1)
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)
    assert float(accuracy) == pytest.approx(expected_accuracy)


def test_a_collapsed_codebook_scores_accuracy_zero_not_one():
    # Every target the same code: every distractor is left out, the loss is 0, and nothing was discriminated.
    x, y = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    valid, negatives = torch.ones(1, 5, dtype=torch.bool), sample_negatives(torch.ones(1, 5, dtype=torch.bool), 3)
    loss, accuracy = contrastive_loss(x, y, valid, negatives, torch.zeros(1, 5, dtype=torch.long))
    assert float(loss) == 0.0 and float(accuracy) == 0.0


def test_hubert_loss_equals_a_naive_reference():
    cfg, model, objective = build("hubert", hubert_unmasked_weight=0.5, hubert_feature_penalty=0.0)
    batch = {"wavs": torch.randn(2, 3200) * 0.1, "lengths": torch.tensor([3200, 2400])}
    torch.manual_seed(5)
    loss, metrics = objective(model, batch)
    torch.manual_seed(5)  # the same mask
    z, lengths = objective.masking.encode(model, batch)
    layers, mask = objective.masking.contextualize(model, z, lengths)
    targets = objective.targets(batch, z.shape[1], z.device)
    out = objective.final_proj(layers[-1]).double()
    emb = objective.unit_embeddings.double()
    masked, unmasked = [], []
    for b in range(2):
        for t in range(int(lengths[b])):
            logits = torch.stack([F.cosine_similarity(out[b, t], e, dim=0) for e in emb]) / 0.1
            ce = -torch.log_softmax(logits, 0)[targets[b, t]]
            (masked if mask[b, t] else unmasked).append(ce)
    expected = torch.stack(masked).mean() + 0.5 * torch.stack(unmasked).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), abs=1e-5)
    assert unit_logits(out, emb, 0.1).shape == (2, 20, 32)


# --- HuBERT's targets ----------------------------------------------------------------------------------------

def write_units(path, units: dict[str, list[int]]) -> None:
    path.write_text("".join(f"{utt}\t{','.join(map(str, u))}\n" for utt, u in units.items()))


def test_a_window_gets_the_units_of_its_frames(tmp_path):
    write_units(tmp_path / "quantized_outputs.txt", {"a": list(range(100)), "b": [7] * 50})
    targets = UnitTargets(tmp_path, num_units=100)
    got = targets.windows(["a", "a", "a", "b"], [0, 1600, 1700, 320], 20, 160)
    assert got[0].tolist() == list(range(20))
    assert got[1].tolist() == list(range(10, 30))  # offset 1600 = frame 10
    assert got[2].tolist() == list(range(11, 31))  # offset 1700: nearest frame 11 (10.6 frames)
    assert got[3].tolist() == [7] * 20
    assert window_shift(100 * 160 - 3200 + 100, 160, 20, 100) == 80  # kept inside the sequence
    targets.check({"a": 100, "b": 50})
    # One frame either way is a convention for the last partial 10 ms (the MFCC floor's n // 160 against a
    # padded conv encoder's one more): accepted, and a whole-utterance window repeats the last unit.
    targets.check({"a": 99, "b": 51})
    assert targets.windows(["b"], [0], 51, 160)[0].tolist() == [7] * 51
    with pytest.raises(TargetsError, match="utterance b has 50 units, but the model gives 52 frames"):
        targets.check({"a": 100, "b": 52})
    with pytest.raises(TargetsError, match="no units for utterance c"):
        targets.check({"a": 100, "c": 10})
    with pytest.raises(TargetsError, match="utterance a has unit 99, but hubert_num_units is 50"):
        UnitTargets(tmp_path, num_units=50)
    with pytest.raises(TargetsError, match="neither"):
        UnitTargets(tmp_path / "missing", num_units=50)


def test_random_projection_targets_are_deterministic_and_saved():
    first = RandomProjectionTargets(num_units=64, seed=3)
    second = RandomProjectionTargets(num_units=64, seed=3)
    assert torch.equal(first.codebook, second.codebook) and torch.equal(first.projection, second.projection)
    assert torch.allclose(first.codebook.norm(dim=-1), torch.ones(64))
    wavs = torch.randn(2, 3200) * 0.1
    targets = first(wavs, torch.tensor([3200, 3200]), 20)
    assert targets.shape == (2, 20) and targets.dtype == torch.long
    assert torch.equal(targets, second(wavs, torch.tensor([3200, 3200]), 20))
    assert len(targets.unique()) > 3
    cfg, model, objective = build("hubert")
    state = objective.state_dict()
    assert "random_projection.codebook" in state and "random_projection.projection" in state


# --- training --------------------------------------------------------------------------------------------------

def masked_overrides(name: str, tiny_overrides: dict) -> dict:
    base = {k: v for k, v in tiny_overrides.items() if not k.startswith("cpc_")}
    return {**base, **TINY[name], "decay": "constant", "max_steps": 4}


def read_log(exp_dir):
    return (exp_dir / TRAIN_LOG).read_text().splitlines()


@pytest.mark.parametrize("name", ["w2v2", "hubert"])
def test_trains_from_the_cli_and_resumes_exactly(name, tiny_corpus, tiny_overrides, tmp_path):
    overrides = masked_overrides(name, tiny_overrides)
    args = [f"{k}={v}" for k, v in overrides.items()]
    assert main(["train", "--data", str(tiny_corpus), "--exp-dir", str(tmp_path / "straight"), "--no-progress",
                 *args]) == 0
    train(build_config(overrides={**overrides, "max_steps": 2}), tiny_corpus, tmp_path / "resumed", progress=False)
    train(build_config(overrides=overrides), tiny_corpus, tmp_path / "resumed", progress=False)
    assert read_log(tmp_path / "resumed") == read_log(tmp_path / "straight")
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("resumed", "straight"))
    assert a["step"] == b["step"] == 4
    for part in ("model", "objective"):
        for key, tensor in b[part].items():
            assert torch.equal(a[part][key], tensor), (part, key)
    if name == "w2v2":
        assert int(b["objective"]["micro_batches"]) == 4


def test_hubert_trains_on_units_and_refuses_units_of_another_length(tiny_corpus, tiny_overrides, tmp_path):
    from audiossl.data.corpus import load_corpus

    utterances, _ = load_corpus(tiny_corpus, progress=False)
    rng = np.random.default_rng(0)
    units = {u.id: rng.integers(0, 10, u.num_samples // 160).tolist() for u in utterances}
    write_units(tmp_path / "units.txt", units)
    overrides = {**masked_overrides("hubert", tiny_overrides), "hubert_targets": str(tmp_path / "units.txt"),
                 "hubert_num_units": 10, "max_steps": 2}
    summary = train(build_config(overrides=overrides), tiny_corpus, tmp_path / "exp", progress=False)
    assert summary["step"] == 2 and math.isfinite(summary["metrics"]["accuracy"])
    victim = utterances[3].id
    units[victim] = units[victim][:-2]
    write_units(tmp_path / "units.txt", units)
    with pytest.raises(TargetsError, match=f"utterance {victim} has"):
        train(build_config(overrides=overrides), tiny_corpus, tmp_path / "exp2", progress=False)


def test_the_next_hubert_iteration_starts_from_the_last_ones_model(tiny_corpus, tiny_overrides, tmp_path):
    base = {**masked_overrides("hubert", tiny_overrides), "max_steps": 2}
    train(build_config(overrides={**base, "hubert_num_units": 32}), tiny_corpus, tmp_path / "it1", progress=False)
    it1 = tmp_path / "it1" / "checkpoint.pt"
    saved = load_checkpoint(it1)
    # Iteration 2 predicts other units: the model starts as iteration 1's, the objective (its unit
    # embeddings, another shape here) starts new.
    it2 = {**base, "hubert_num_units": 20, "init_from": str(it1)}
    module = build_pretrainer(build_config(overrides=it2))
    init_model(module, it1)
    for key, tensor in module.model.state_dict().items():
        assert torch.equal(tensor, saved["model"][key]), key
    assert module.objective.state_dict()["unit_embeddings"].shape[0] == 20
    train(build_config(overrides=it2), tiny_corpus, tmp_path / "it2", progress=False)
    # A resume takes the experiment's own checkpoint and never rereads init_from.
    it1.unlink()
    summary = train(build_config(overrides={**it2, "max_steps": 3}), tiny_corpus, tmp_path / "it2", progress=False)
    assert summary["step"] == 3
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'it2' / 'checkpoint.pt'}: model tensor"):
        train(build_config(overrides={**it2, "init_from": str(tmp_path / "it2" / "checkpoint.pt"),
                                      "encoder_channels": 8, "context_dim": 8}),
              tiny_corpus, tmp_path / "other", progress=False)


def test_hubert_needs_targets():
    with pytest.raises(ConfigError, match="needs hubert_targets"):
        build_config(overrides={**TINY["hubert"], "hubert_targets": ""})


@pytest.mark.parametrize("name", ["w2v2", "hubert"])
def test_log_mel_frontend_trains(name):
    cfg, model, objective = build(name, frontend="logmel", n_mels=16, encoder_kernels=[], encoder_strides=[],
                                  encoder_paddings=[])
    batch = {"wavs": torch.randn(2, 3200) * 0.1, "lengths": torch.full((2,), 3200)}
    loss, metrics = objective(model, batch)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and objective.masking.mask_embedding.shape == (16,)


@pytest.mark.parametrize("name", ["w2v2", "hubert"])
def test_torchrun_trains_and_resumes(name, tiny_corpus, tiny_overrides, tmp_path):
    settings = {**masked_overrides(name, tiny_overrides), "max_steps": 1, "ckpt_every": 1}
    for max_steps in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                   "audiossl.cli", "train", "--data", str(tiny_corpus), "--exp-dir", str(tmp_path / "ddp"),
                   "--no-progress", *(f"{k}={v}" for k, v in {**settings, "max_steps": max_steps}.items())]
        done = subprocess.run(command, env=package_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    saved = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert saved["step"] == 2 and len(saved["rng"]) == 2
    assert all(math.isfinite(float(line.split("\t")[1])) for line in read_log(tmp_path / "ddp")[1:])

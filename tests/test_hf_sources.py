"""Hugging Face and fairseq models as feature sources, and the frame-rate rule of the probes (issue 22).

Nothing is downloaded: the models are tiny random ones that ``transformers``
builds and saves in its real format (``save_pretrained``), and fairseq
checkpoints are written in fairseq's key layout from them. The features must
equal the library's own forward (``model(..., output_hidden_states=True)``)
within 1e-5, for padded batches too; 20 ms features must score in the phone,
CTC and unit probes exactly as the same features repeated to 10 ms.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import import_reference

transformers = import_reference("transformers", "the hf extra: pip install -e .[hf]")

from audiossl.checkpoint import CheckpointError  # noqa: E402
from audiossl.cli import main  # noqa: E402
from audiossl.data.audio import read_audio  # noqa: E402
from audiossl.extract import ExtractOptions, FeatureError, FeatureSet, extract, select_utterances  # noqa: E402
from audiossl.interop.fairseq import FairseqError, conv_layers  # noqa: E402
from audiossl.interop.hf import HFModelError  # noqa: E402
from audiossl.interop.sources import open_model  # noqa: E402
from audiossl.probes import ProbeError, ProbeSettings, RunOptions, phone_probe  # noqa: E402
from audiossl.probes.abx.labels import ABXSettings, abx_probe, abx_score  # noqa: E402
from audiossl.probes.ctc.probe import CTCSettings, ctc_phone_probe  # noqa: E402
from audiossl.probes.tasks import AtLabelRate, label_spans, phone_examples  # noqa: E402
from audiossl.probes.unit_quality import units_probe  # noqa: E402
from audiossl.units.fit import FitSettings, fit_units  # noqa: E402
from audiossl.units.kmeans import KMeansSettings  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
ALIGNMENTS, PHONES = DEMO / "converted_aligned_phones.txt", DEMO / "phones.txt"
SMALL = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
         "conv_dim": (16,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}
LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}
# name: (config class, its settings, preprocessor_config.json: do_normalize, return_attention_mask)
HF_MODELS = {
    "wav2vec2": ("Wav2Vec2Config", {}, (True, False)),  # as wav2vec2-base: group norm, no mask
    "hubert": ("HubertConfig", {}, (False, False)),
    "wavlm": ("WavLMConfig", LAYER_NORM, (True, True)),  # as the Large ones: layer norm, pre-norm, a mask
    "wav2vec2-large": ("Wav2Vec2Config", LAYER_NORM, (True, True)),
    "data2vec-audio": ("Data2VecAudioConfig", {}, (True, True)),
}
FRAME_RATE_20MS = {"features_ms": 20.0, "labels_ms": 10.0, "how": "repeat features", "factor": 2}

pytestmark = [pytest.mark.usefixtures("one_thread"),  # conftest: the machine is shared
              # transformers' WavLM attention, as the library's own forward runs here
              pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")]


def save_hf(folder: Path, name: str, seed: int = 0) -> torch.nn.Module:
    """A random tiny model of ``HF_MODELS[name]`` saved as the Hub serves one; returns the model."""
    config_class, settings, (normalize, mask) = HF_MODELS[name]
    torch.manual_seed(seed)
    network = transformers.AutoModel.from_config(getattr(transformers, config_class)(**SMALL, **settings)).eval()
    network.save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=normalize, return_attention_mask=mask).save_pretrained(folder)
    return network


HF_TO_FAIRSEQ = [  # the inverse of torchaudio's import_fairseq renaming, from transformers' names
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(.*)", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"feature_projection\.layer_norm\.(.*)", r"layer_norm.\1"),
    (r"feature_projection\.projection\.(.*)", r"post_extract_proj.\1"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.layer_norm\.(.*)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.(.*)", r"encoder.layers.\1.self_attn.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm\.(.*)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(.*)", r"encoder.layers.\1.fc1.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(.*)", r"encoder.layers.\1.fc2.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(.*)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"masked_spec_embed", "mask_emb"),
]


def save_fairseq(path: Path, network: torch.nn.Module, name: str = "wav2vec2", normalize: bool = False,
                 **cfg) -> Path:
    """``network`` (a transformers model) as fairseq's ``checkpoint_utils.save_state`` writes it, with the
    pretraining heads fairseq keeps beside it."""
    layer_norm = network.config.feat_extract_norm == "layer"
    state = {}
    for key, tensor in network.state_dict().items():
        if key.startswith("feature_extractor.conv_layers.") and ".layer_norm." in key:  # conv norms: .2 or .2.1
            state[re.sub(r"\.layer_norm\.", ".2.1." if layer_norm else ".2.", key)] = tensor
            continue
        for pattern, replacement in HF_TO_FAIRSEQ:
            if re.fullmatch(pattern, key):
                state[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            raise KeyError(key)
    heads = {"quantizer.vars": torch.randn(1, 8, 4), "project_q.weight": torch.randn(4, 4),
             "final_proj.weight": torch.randn(4, 32), **({"label_embs_concat": torch.randn(8, 4)} if name == "hubert"
                                                         else {})}
    c = network.config
    model = {"_name": name, "extractor_mode": "layer_norm" if layer_norm else "default",
             "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] * 2", "conv_bias": c.conv_bias,
             "encoder_embed_dim": c.hidden_size, "encoder_layers": c.num_hidden_layers,
             "encoder_attention_heads": c.num_attention_heads, "encoder_ffn_embed_dim": c.intermediate_size,
             "layer_norm_first": c.do_stable_layer_norm, "conv_pos": c.num_conv_pos_embeddings,
             "conv_pos_groups": c.num_conv_pos_embedding_groups, **cfg}
    torch.save({"cfg": {"model": model, "task": {"_name": "audio_pretraining", "normalize": normalize}},
                "model": {**state, **heads}, "optimizer_history": [{"num_updates": 0}]}, path)
    return path


@torch.no_grad()
def library(network: torch.nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    """The library's own forward: each hidden state, the output, and its conv encoder's output."""
    out = network(**inputs, output_hidden_states=True)
    return {"encoder": network.feature_extractor(inputs["input_values"]).transpose(1, 2),
            "context": out.last_hidden_state, **{f"layer_{i}": h for i, h in enumerate(out.hidden_states)}}


def waveforms(lengths=(16000, 12345, 9001)) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(3)
    raw = [(0.1 * rng.standard_normal(n) + 0.05).astype(np.float32) for n in lengths]
    wavs = torch.zeros(len(raw), max(lengths))
    for row, wav in enumerate(raw):
        wavs[row, : len(wav)] = torch.from_numpy(wav)
    return raw, wavs, torch.tensor(lengths)


def assert_close(ours: dict, theirs: dict, row: int, frames: int, theirs_row: int = 0) -> None:
    for name, x in theirs.items():
        assert x.shape[1] >= frames
        difference = float((ours[name][0][row, :frames] - x[theirs_row, :frames]).abs().max())
        assert difference <= 1e-5, (name, difference)


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_hf_features_equal_the_library_forward_padded_or_not(tmp_path, name):
    network = save_hf(tmp_path, name)
    model, source = open_model(tmp_path)
    assert (source["format"], source["model_type"], source["checkpoint"]) == ("huggingface", network.config.model_type,
                                                                             str(tmp_path.resolve()))
    assert (model.hop, model.receptive_field, model.frame_rate) == (320, 400, 50.0)
    assert model.layer_names == ["encoder", "context", "layer_0", "layer_1", "layer_2"]
    raw, wavs, lengths = waveforms()
    ours, _ = model.extract_features(wavs, lengths, model.layer_names)
    processor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    for row, wav in enumerate(raw):  # each utterance alone, as the library runs it
        theirs = library(network, processor(wav, sampling_rate=16000, return_tensors="pt"))
        assert int(ours["context"][1][row]) == theirs["context"].shape[1]
        assert_close(ours, theirs, row, theirs["context"].shape[1])
    # Padded: a model with an exact mask equals the library's own padded batch; the others run each length apart.
    assert model.pads_exactly == (name in ("wavlm", "wav2vec2-large"))
    if model.pads_exactly:
        theirs = library(network, processor(raw, sampling_rate=16000, padding=True, return_tensors="pt"))
        for row in range(len(raw)):
            assert_close(ours, theirs, row, int(ours["context"][1][row]), row)


@pytest.mark.parametrize("name, normalize", [("wav2vec2", False), ("hubert", False), ("wav2vec2-large", True)])
def test_fairseq_checkpoint_equals_the_library_forward(tmp_path, name, normalize):
    network = save_hf(tmp_path / "hf", name)
    path = save_fairseq(tmp_path / "checkpoint_best.pt", network, name.split("-")[0], normalize)
    model, source = open_model(path)
    assert (source["format"], source["model_type"]) == ("fairseq", name.split("-")[0])
    raw, wavs, lengths = waveforms()
    ours, _ = model.extract_features(wavs, lengths, model.layer_names)
    for row, wav in enumerate(raw):
        wav = torch.from_numpy(wav)[None]
        theirs = library(network, {"input_values": torch.nn.functional.layer_norm(wav, wav.shape[1:])
                                   if normalize else wav})
        assert_close(ours, theirs, row, theirs["context"].shape[1])
    if model.pads_exactly:  # the layer-norm one: torchaudio's own padded batch gives the same layers
        from torchaudio.models.wav2vec2.utils import import_huggingface_model

        with torch.no_grad():
            torchaudio_layers, _ = import_huggingface_model(network).eval().extract_features(
                model.normalize(wavs, lengths), lengths)
        for row in range(len(raw)):
            frames = int(ours["layer_1"][1][row])
            assert float((ours["layer_1"][0][row, :frames] - torchaudio_layers[0][row, :frames]).abs().max()) < 1e-5


def test_fairseq_reading_refuses_what_it_cannot_carry(tmp_path):
    network = save_hf(tmp_path / "hf", "wav2vec2")
    assert conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2", "x") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(FairseqError, match="conv_feature_layers"):
        conv_layers("__import__('os').system('true')", "x")
    refused = {"layer_type: 'conformer'": {"layer_type": "conformer"}, "pos_conv_depth: 5": {"pos_conv_depth": 5},
               "fairseq model 'data2vec_audio'": {"_name": "data2vec_audio"},
               "a fine-tuned fairseq model": {"_name": "wav2vec_ctc"}}
    for message, cfg in refused.items():
        with pytest.raises(FairseqError, match=message):
            open_model(save_fairseq(tmp_path / "bad.pt", network, **cfg))
    # Plain data the old fairseq pickled (an argparse Namespace of settings) reads; a class that needs code does not.
    ckpt = torch.load(save_fairseq(tmp_path / "new.pt", network), weights_only=True)
    torch.save({"args": argparse.Namespace(**ckpt["cfg"]["model"], normalize=False), "model": ckpt["model"]},
               tmp_path / "old.pt")
    assert open_model(tmp_path / "old.pt")[1]["model_type"] == "wav2vec2"
    torch.save({**ckpt, "extra_state": {"meters": Path("x")}}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match=r"refused: loading it would need to run code \(it names pathlib"):
        open_model(tmp_path / "code.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an audiossl checkpoint .* nor a fairseq one"):
        open_model(tmp_path / "other.pt")


def test_hf_folders_that_cannot_be_used_are_refused(tmp_path):
    save_hf(tmp_path / "ok", "wav2vec2")
    (tmp_path / "ok" / "preprocessor_config.json").unlink()
    model, _ = open_model(tmp_path / "ok")  # without it: the extractor's defaults, a mask only for layer norm
    assert model.processor.do_normalize and not model.use_mask
    (tmp_path / "empty").mkdir()
    with pytest.raises(HFModelError, match="without config.json"):
        open_model(tmp_path / "empty")
    shutil.copy(tmp_path / "ok" / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(HFModelError, match="no weights"):
        open_model(tmp_path / "empty")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "empty" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(HFModelError, match="model_type 'bert'; audiossl reads wav2vec2, hubert, wavlm"):
        open_model(tmp_path / "empty")
    save_hf(tmp_path / "wide", "wav2vec2")  # weights of another shape than config.json says
    (tmp_path / "wide" / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(HFModelError, match="cannot load|unset"):
        open_model(tmp_path / "wide")


def test_chunked_features_differ_from_whole_files_by_a_measured_amount(tmp_path):
    _, wavs, lengths = waveforms((64000, 40000))
    differences = {}
    for name in ("wav2vec2", "wav2vec2-large"):
        save_hf(tmp_path / name, name)
        model, _ = open_model(tmp_path / name)
        whole, frames = model.forward_chunked(wavs, lengths, model.layer_names)
        chunked, _ = model.forward_chunked(wavs, lengths, model.layer_names, chunk_frames=25)  # 0.5 s chunks
        valid = (torch.arange(whole["encoder"].shape[1])[None, :] < frames[:, None])[..., None]
        differences[name] = {layer: (float(((whole[layer] - chunked[layer]).abs() * valid).max()),
                                     float((whole[layer].abs() * valid).max())) for layer in model.layer_names}
    # A layer-norm conv encoder's frames are the whole file's; a group norm's and the Transformer's are not.
    assert differences["wav2vec2-large"]["encoder"][0] < 1e-5
    assert differences["wav2vec2"]["encoder"][0] > 1e-3 and differences["wav2vec2-large"]["layer_2"][0] > 1e-5
    print(json.dumps(differences))  # (largest difference, largest value) per layer: docs/interop.md
    # So the chunks are part of what made an extraction: a re-run with others is refused, not mixed in.
    utterances, _ = select_utterances(DEMO, progress=False)
    extract(model, utterances[:2], tmp_path / "out", ["layer_2"],
            options=ExtractOptions(chunk_seconds=0.5, progress=False))
    assert FeatureSet(tmp_path / "out" / "layer_2").meta["chunk_seconds"] == 0.5
    with pytest.raises(FeatureError, match=r"other settings \(chunk_seconds\)"):
        extract(model, utterances[:2], tmp_path / "out", ["layer_2"], options=ExtractOptions(progress=False))


def repeated_copy(layer: Path, out: Path, factor: int) -> Path:
    """A copy of an extracted layer folder with every frame repeated ``factor`` times: the same features at
    ``factor`` times the frame rate, as an extraction at that rate would record them."""
    shutil.copytree(layer, out)
    meta = json.loads((out / "meta.json").read_text())
    meta.update(frame_rate=meta["frame_rate"] * factor, hop=meta["hop"] // factor)
    (out / "meta.json").write_text(json.dumps(meta))
    rows = [line.split("\t") for line in (out / "index.tsv").read_text().splitlines()]
    for row in rows[1:]:
        np.save(out / row[1], np.repeat(np.load(out / row[1]), factor, axis=0))
        row[2], row[4] = str(int(row[2]) * factor), f"{meta['frame_rate']:g}"
    (out / "index.tsv").write_text("".join("\t".join(row) + "\n" for row in rows))
    return out


@pytest.fixture(scope="module")
def demo_20ms(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Layer 2 of a random HuBERT on 24 demo utterances at 20 ms, the same frames repeated to 10 ms, and the
    split files (2 training and 1 test utterance of each of 8 speakers)."""
    root = tmp_path_factory.mktemp("demo_20ms")
    train = [line for line in (DEMO / "train_split.txt").read_text().split()]
    test = [line for line in (DEMO / "test_split.txt").read_text().split()]
    speakers = sorted({u.split("-")[0] for u in train})
    (root / "train.txt").write_text("".join(u + "\n" for s in speakers for u in [t for t in train
                                                                                   if t.startswith(s + "-")][:2]))
    (root / "test.txt").write_text("".join(u + "\n" for s in speakers for u in [t for t in test
                                                                                  if t.startswith(s + "-")][:1]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    save_hf(root / "hubert", "hubert")
    model, source = open_model(root / "hubert")
    utterances, _ = select_utterances(DEMO, [root / "train.txt", root / "test.txt"], progress=False)
    extract(model, utterances, root / "f20", ["layer_2"], source, ExtractOptions(root=DEMO, progress=False))
    torch.set_num_threads(threads)
    (root / "f10").mkdir()
    repeated_copy(root / "f20" / "layer_2", root / "f10" / "layer_2", 2)
    return root / "f20", root / "f10", root


def test_a_20ms_source_scores_as_its_frames_repeated_to_10ms(demo_20ms):
    f20, f10, root = demo_20ms
    splits = {"train_split": root / "train.txt", "test_split": root / "test.txt"}
    common = {"layers": ["layer_2"], "phones": PHONES, "options": RunOptions((), progress=False), **splits}
    reports = [phone_probe(f, ALIGNMENTS, settings=ProbeSettings(epochs=3, batch_size=256), **common)
               for f in (f20, f10)]
    assert reports[0]["frame_rate"] == FRAME_RATE_20MS == reports[0]["results"][0]["frame_rate"]
    assert reports[1]["frame_rate"] == {"features_ms": 10.0, "labels_ms": 10.0, "how": "as they are", "factor": 1}
    for key in ("accuracy", "train_accuracy", "test_examples", "test_loss"):
        assert reports[0]["results"][0][key] == reports[1]["results"][0][key]
    ctc = [ctc_phone_probe(f, ALIGNMENTS, settings=CTCSettings(epochs=2, batch_size=8), **common) for f in (f20, f10)]
    assert ctc[0]["frame_rate"] == FRAME_RATE_20MS
    assert (ctc[0]["results"][0]["per"], ctc[0]["results"][0]["test_loss"]) == \
        (ctc[1]["results"][0]["per"], ctc[1]["results"][0]["test_loss"])
    units, _ = fit_units(f20, root / "units", "layer_2", FitSettings(KMeansSettings(k=8, seed=1), 0, "none"),
                         progress=False)
    scored = [units_probe(units.folder, f, ALIGNMENTS, split=root / "test.txt", phones=PHONES,
                          abx=ABXSettings(context="none", max_triples_per_item=5), options=common["options"])
              for f in (f20, f10)]
    assert scored[0]["results"][0]["frame_rate"] == FRAME_RATE_20MS
    for key in ("pnmi", "phone_purity", "cluster_purity", "within", "across", "frames"):
        assert scored[0]["results"][0][key] == scored[1]["results"][0][key], key


def test_the_frame_rate_rule_refuses_what_does_not_divide_and_keeps_the_tolerance(demo_20ms, tmp_path):
    f20, _, root = demo_20ms
    odd = tmp_path / "f25"
    odd.mkdir()
    shutil.copytree(f20 / "layer_2", odd / "layer_2")
    meta = json.loads((odd / "layer_2" / "meta.json").read_text())
    (odd / "layer_2" / "meta.json").write_text(json.dumps({**meta, "frame_rate": 40.0}))
    message = r"features at 40 frames/s \(25 ms\) and phone labels at 100 \(10 ms\): neither rate is a whole"
    for probe in (phone_probe, ctc_phone_probe):
        with pytest.raises(ProbeError, match=message):
            probe(odd, ALIGNMENTS, ["layer_2"], options=RunOptions((), progress=False))
    with pytest.raises(ProbeError, match=message):
        abx_probe(odd, ALIGNMENTS, ["layer_2"], options=RunOptions((), progress=False))
    assert main(["probe", "abx", "--features", str(odd), "--layer", "layer_2", "--alignments", str(ALIGNMENTS),
                 "--baselines", "none", "--device", "cpu", "--no-progress"]) == 2
    # The 20 ms frames repeated meet the labels within the tolerance of a frame or two, and not beyond it.
    features = AtLabelRate(FeatureSet(f20 / "layer_2"))
    utt = next(iter(features.num_frames))
    n = features.base.num_frames[utt]
    feats, labels = phone_examples(features, {utt: np.zeros(2 * n + 2, dtype=np.int64)}, [utt])
    assert len(feats) == len(labels) == 2 * n and np.array_equal(feats[::2], features.base.load(utt))
    with pytest.raises(ProbeError, match="difference above tolerance"):
        phone_examples(features, {utt: np.zeros(2 * n + 3, dtype=np.int64)}, [utt])
    old = tmp_path / "old"  # a folder whose meta.json records no frame rate reads as 10 ms
    shutil.copytree(f20 / "layer_2", old)
    (old / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "frame_rate"}))
    assert FeatureSet(old).frame_rate == 100.0


def test_faster_features_are_averaged_to_the_labels_rate(demo_20ms, tmp_path):
    f20, _, _ = demo_20ms
    fast = repeated_copy(f20 / "layer_2", tmp_path / "layer_2", 4)  # 5 ms frames: each 10 ms label gets two
    features = AtLabelRate(FeatureSet(fast))
    assert features.record == {"features_ms": 5.0, "labels_ms": 10.0, "how": "average features", "factor": 2}
    utt = next(iter(features.num_frames))
    np.testing.assert_allclose(features.load(utt), np.repeat(features.base.load(utt)[::4], 2, axis=0), atol=1e-6)
    assert label_spans(2, 7, "average features", 2) == (4, 14)


def test_abx_cuts_items_at_the_features_own_frame_shift():
    rng = np.random.default_rng(0)
    labels, feats = {}, {}
    for u in range(6):  # phone runs of even length at even 10 ms frames: each one exactly some 20 ms frames
        runs = rng.integers(1, 4, 12) * 2
        labels[f"{u % 2}-{u}"] = np.repeat(rng.integers(0, 5, len(runs)), runs)
        feats[f"{u % 2}-{u}"] = rng.standard_normal((len(labels[f"{u % 2}-{u}"]) // 2, 6)).astype(np.float32)
    speakers = {u: u.split("-")[0] for u in labels}
    settings = ABXSettings(context="none", max_triples_per_item=0)
    at_20ms = abx_score(feats, labels, speakers, settings, silence=None, frame_rate=50.0)
    pooled = abx_score(feats, {u: x[::2] for u, x in labels.items()}, speakers, settings, silence=None)
    assert at_20ms["num_items"] == pooled["num_items"] > 0
    assert at_20ms["within"] == pooled["within"] and at_20ms["across"] == pooled["across"]
    assert label_spans(2, 7, "repeat features", 2) == (1, 4) and label_spans(3, 5, "as they are", 1) == (3, 5)


def utterance_features(source: Path | str, wav: np.ndarray, fairseq_network=None) -> dict[str, torch.Tensor]:
    """The library's own forward of one utterance: transformers' for a folder; for a fairseq file, transformers'
    on the model it was written from (its task does not normalize)."""
    if fairseq_network is not None:
        return library(fairseq_network, {"input_values": torch.from_numpy(wav)[None]})
    network = transformers.AutoModel.from_pretrained(source).eval()
    processor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(source)
    return library(network, processor(wav, sampling_rate=16000, return_tensors="pt"))


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm", "fairseq"])
def test_every_command_takes_these_sources(demo_20ms, tmp_path, capsys, kind):
    _, _, root = demo_20ms
    network = save_hf(tmp_path / "hf", "wav2vec2" if kind == "fairseq" else kind)
    source = save_fairseq(tmp_path / "wav2vec_small.pt", network) if kind == "fairseq" else tmp_path / "hf"
    run = ["--device", "cpu", "--num-workers", "0", "--no-progress"]
    data = ["--data", str(DEMO)]
    splits = ["--train-split", str(root / "train.txt"), "--test-split", str(root / "test.txt")]
    features = tmp_path / "features"
    extract_args = ["extract", "--ckpt", str(source), *data, "--ids", str(root / "test.txt"), "--layer",
                    "encoder,layer_0,layer_2,context", "--out", str(features), "--batch-size", "4", *run]
    assert main(extract_args) == 0
    assert main(extract_args) == 0  # resumed: everything is there
    assert "8 array set(s) reused, 0 added" in capsys.readouterr().out
    layer = FeatureSet(features / "layer_2")
    assert (layer.frame_rate, layer.meta["hop"], layer.meta["source"]["format"]) == \
        (50.0, 320, "fairseq" if kind == "fairseq" else "huggingface")
    index = (features / "layer_2" / "index.tsv").read_text().splitlines()
    assert all(row.split("\t")[6] == str(Path(source).resolve()) for row in index[1:])
    audio = {u.id: u.path for u in layer.utterances}
    for utt in list(layer.num_frames)[:2]:
        wav = read_audio(audio[utt], 16000).numpy()
        theirs = utterance_features(source, wav, network if kind == "fairseq" else None)
        for name in ("encoder", "layer_0", "layer_2", "context"):
            ours = FeatureSet(features / name).load(utt)
            assert ours.shape[0] == theirs[name].shape[1]
            assert float(np.abs(ours - theirs[name][0].numpy()).max()) <= 1e-5, name

    out = tmp_path / "phone"
    assert main(["probe", "phone", "--ckpt", str(source), *data, "--alignments", str(ALIGNMENTS), "--phones",
                 str(PHONES), "--layer", "layer_1,encoder", "--baselines", "none", *splits, "--out", str(out),
                 "epochs=2", *run]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["features"] for r in metrics["results"]] == ["layer_1", "encoder"]
    assert metrics["frame_rate"] == FRAME_RATE_20MS and metrics["results"][0]["source"]["checkpoint"] == \
        str(Path(source).resolve())
    out = tmp_path / "speaker"
    assert main(["probe", "speaker", "--features", str(out.parent / "phone" / "features"), "--layer", "layer_1",
                 "--baselines", "none", *splits, "--out", str(out), "epochs=2", *run]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_classes"] == 8
    out = tmp_path / "abx"
    assert main(["probe", "abx", "--features", str(features), "--layer", "layer_2", "--alignments", str(ALIGNMENTS),
                 "--phones", str(PHONES), "--baselines", "none", "--out", str(out), "context=none",
                 "max_triples_per_item=5", *run]) == 0
    row = json.loads((out / "metrics.json").read_text())["results"][0]
    assert row["frame_rate"]["how"] == "items cut at the features' own frame shift" and row["num_items"] > 0
    assert main(["units", "fit", "--features", str(features), "--layer", "layer_2", "--k", "4", "--out",
                 str(tmp_path / "units"), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads((tmp_path / "units" / "kmeans.json").read_text())["frame_rate"] == 50.0

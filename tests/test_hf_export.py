"""audiossl w2v2 / HuBERT models written as Hugging Face folders (issue 23): transformers loads them and runs
them to the features audiossl extracts, within 1e-5; a layout transformers lacks is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny, import_reference

transformers = import_reference("transformers", "the hf extra: pip install -e .[hf]")

from audiossl.cli import main  # noqa: E402
from audiossl.interop.hf_export import HFExportError, to_hf  # noqa: E402

# The layout transformers' classes hold (docs/masked.md, "Export"), tiny.
LAYOUT = {"encoder_channels": 16, "encoder_kernels": [10, 3, 3], "encoder_strides": [5, 4, 8],
          "encoder_paddings": [0, 0, 0], "encoder_activation": "gelu", "cmvn": True,
          "context": "transformer", "context_causal": False, "context_dim": 24, "context_layers": 2,
          "context_heads": 2, "context_ff_dim": 48, "context_input_norm": True, "context_position": "conv",
          "context_conv_pos_kernel": 8, "context_conv_pos_groups": 2}
OBJECTIVES = {"w2v2": {"objective": "w2v2", "w2v2_codebook_entries": 8, "w2v2_final_dim": 8},
              "hubert": {"objective": "hubert", "hubert_targets": "random_projection", "hubert_num_units": 16}}

pytestmark = pytest.mark.usefixtures("one_thread")


def checkpoint(tmp_path, **overrides):
    cfg, model, _ = build_tiny({**LAYOUT, **overrides})
    with torch.no_grad():  # every weight away from its initial value, the norms' included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "step": 7}, path)
    return path, model.eval()


@pytest.mark.parametrize("name", OBJECTIVES)
def test_transformers_runs_the_export_to_the_same_features(name, tmp_path, capsys):
    path, model = checkpoint(tmp_path, **OBJECTIVES[name])
    out = tmp_path / "hf"
    assert main(["convert", str(path), "--to", "hf", "--out", str(out)]) == 0
    assert "converted from" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == {"w2v2": "wav2vec2", "hubert": "hubert"}[name]
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()

    hf = transformers.AutoModel.from_pretrained(out).eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(out)
    assert type(hf).__name__ == {"w2v2": "Wav2Vec2Model", "hubert": "HubertModel"}[name]
    torch.manual_seed(1)
    wav = torch.randn(1, 4000) * 0.3 + 0.05
    ours, _ = model.extract_features(wav, torch.tensor([4000]), ("encoder", "context"))
    inputs = extractor(wav[0].numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        encoder = hf.feature_extractor(inputs["input_values"]).transpose(1, 2)
        context = hf(**inputs).last_hidden_state
    assert context.shape == ours["context"][0].shape
    assert torch.allclose(encoder, ours["encoder"][0], atol=1e-5)
    assert torch.allclose(context, ours["context"][0], atol=1e-5)


def test_a_layout_transformers_lacks_is_refused_in_one_line(tmp_path):
    path, _ = checkpoint(tmp_path, **OBJECTIVES["hubert"], context_position="sinusoidal")
    with pytest.raises(HFExportError, match=r"context_position: sinusoidal cannot be exported") as e:
        to_hf(path, tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()
    path, _ = checkpoint(tmp_path, **OBJECTIVES["w2v2"], encoder_paddings=[2, 0, 0])
    with pytest.raises(HFExportError, match="encoder_paddings"):
        to_hf(path, tmp_path / "hf")
    cpc = {k: v for k, v in LAYOUT.items() if not k.startswith("context")}
    path, _ = checkpoint(tmp_path, **cpc, objective="cpc")
    with pytest.raises(HFExportError, match="objective cpc has no Hugging Face class"):
        to_hf(path, tmp_path / "hf")

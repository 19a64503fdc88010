#!/usr/bin/env python3
"""CPC_audio's own code, run on tiny models: the fixtures and the cross-checks of ``audiossl convert``.

    python tools/cpc_audio_fixture.py --peer /path/to/CPC_audio make [--out tests/data/cpc_audio] [--runs a,b]
    python tools/cpc_audio_fixture.py --peer /path/to/CPC_audio forward SOURCE --audio REF.pt --out OUT.pt
    python tools/cpc_audio_fixture.py --peer /path/to/CPC_audio check [--fixtures tests/data/cpc_audio]

``--peer`` is a checkout of https://github.com/facebookresearch/CPC_audio;
nothing of it is copied here, its modules are imported from the checkout.

``make`` trains small CPCModels for one or two epochs of two steps each, as its
``cpc/train.py`` builds and steps them (``parseArgs`` for the settings,
``getEncoder``/``getAR``/``CPCModel``, ``getCriterion``, Adam over the
criterion's and the model's parameters), and writes each run as CPC_audio's
training folder: ``checkpoint_<epoch>.pt`` by its ``save_checkpoint``,
``checkpoint_logs.json`` by its ``save_logs``, and ``checkpoint_args.json``,
the namespace dumped as JSON (the upstream ``train.py`` writes it so; this
checkout's omits the dump), with ``best`` None (no validation is run). Then it
reloads the last epoch with CPC_audio's
own ``loadModel`` and ``loadCriterion`` and saves ``reference_<run>.pt``: a
short harmonic signal and CPC_audio's encoder and context outputs on it, and
its predictor's scores of the positive frames ``z_{t+k}``. The runs
(``--runs``):

- ``ln_lstm``: ``--normMode layerNorm --arMode LSTM --nLevelsGRU 2 --rnnMode linear``
- ``bn_gru``: ``--normMode batchNorm --arMode GRU --rnnMode linear``
- ``id_noar``: ``--normMode ID --arMode no_ar --rnnMode linear``
- ``tf_pred``: ``--normMode layerNorm --arMode GRU --rnnMode transformer``
  (its predictor's 2048-wide feed-forward layers make a 2 MB checkpoint: not
  committed, ``check`` makes it in a temporary folder)

``forward`` loads SOURCE (a training folder, a ``checkpoint_<epoch>.pt`` or a
release file ``{"config", "weights"}``) with CPC_audio's loaders (release
files as its ``hubconf.py`` does, but refusing missing or unexpected keys),
runs it on the reference's audio and saves the same outputs; for a training
checkpoint it also loads the saved optimizer state into CPC_audio's Adam, as
its ``train.py`` does on resume. ``check`` converts each fixture with
``audiossl convert`` both ways, and exports two random audiossl models
(``encoder_norm: channel``, biased, with an LSTM; ``batch`` with a 2-layer
GRU and a Transformer predictor), and prints the largest differences of the
encoder and context features and of the predictor's scores.

What its code needs and this environment lacks is stood in for, nothing
else: ``progressbar`` and ``psutil`` (imported by its criterion and train
modules for CTC alignment and memory logs) by empty modules, and its
predictor's ``from transformers import buildTransformerAR`` (which means its
own ``cpc/transformers.py``) is pointed at that module while the criterion
is built.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "ln_lstm": ["--hiddenEncoder", "8", "--hiddenGar", "6", "--normMode", "layerNorm", "--arMode", "LSTM",
                "--nLevelsGRU", "2", "--rnnMode", "linear", "--nPredicts", "3"],
    "bn_gru": ["--hiddenEncoder", "8", "--hiddenGar", "8", "--normMode", "batchNorm", "--arMode", "GRU",
               "--rnnMode", "linear", "--nPredicts", "3", "--samplingType", "uniform"],
    "id_noar": ["--hiddenEncoder", "8", "--normMode", "ID", "--arMode", "no_ar", "--rnnMode", "linear",
                "--nPredicts", "2"],
    "tf_pred": ["--hiddenEncoder", "16", "--hiddenGar", "16", "--normMode", "layerNorm", "--arMode", "GRU",
                "--rnnMode", "transformer", "--nPredicts", "2"],
}
COMMITTED = ("ln_lstm", "bn_gru", "id_noar")
EPOCHS = {"ln_lstm": 2}  # two checkpoints, of which CPC_audio's loaders read the later; the others have one
COMMON = ["--negativeSamplingExt", "4", "--sizeWindow", "3200", "--batchSizeGPU", "4", "--random_seed", "7"]


class PeerError(RuntimeError):
    """The checkout cannot be used; the message says why."""


def import_peer(peer: Path) -> types.SimpleNamespace:
    """CPC_audio's modules, imported from the checkout at ``peer``."""
    if not (peer / "cpc" / "train.py").is_file():
        raise PeerError(f"{peer} is not a CPC_audio checkout (no cpc/train.py)")
    for name in ("progressbar", "psutil"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(peer))
    try:
        import cpc.feature_loader as fl
        import cpc.train as train
        import cpc.transformers as transformers
        import cpc.utils.misc as misc
        from cpc.cpc_default_config import get_default_cpc_config
        from cpc.model import CPCModel
    except ImportError as e:
        raise PeerError(f"cannot import CPC_audio from {peer}: {e}") from None
    return types.SimpleNamespace(fl=fl, train=train, transformers=transformers, misc=misc, CPCModel=CPCModel,
                                 default_config=get_default_cpc_config)


@contextlib.contextmanager
def own_transformers(cpc):
    """``from transformers import ...`` inside CPC_audio's criterion means its own cpc/transformers.py."""
    saved = sys.modules.get("transformers")
    sys.modules["transformers"] = cpc.transformers
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["transformers"]
        else:
            sys.modules["transformers"] = saved


def harmonic(num_samples: int, seed: int, f0: float = 140.0) -> torch.Tensor:
    """A tone with four harmonics, a slow pitch drift and a little noise, in [-0.3, 0.3]."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 1.3 * t))) / 16000
    wav = sum(np.sin(h * phase + rng.uniform(0, 6)) / h for h in range(1, 5))
    wav = 0.3 * wav / np.abs(wav).max() + 0.01 * rng.standard_normal(num_samples)
    return torch.from_numpy(wav.astype(np.float32))


def make_run(cpc, name: str, out: Path, steps: int = 2) -> Path:
    """Train run ``name`` as cpc/train.py would and write its training folder; returns the last checkpoint."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    args = cpc.train.parseArgs(["--pathDB", "/datasets/LibriSpeech/train-clean-100", "--pathCheckpoint",
                                str(folder), *COMMON, *RUNS[name]])
    args.nGPU = 1  # as recorded on a one-GPU machine (parseArgs counts this machine's GPUs)
    args.pathCheckpoint = f"/checkpoint/cpc_fixtures/{name}"
    cpc.misc.set_seed(args.random_seed)
    model = cpc.CPCModel(cpc.fl.getEncoder(args), cpc.fl.getAR(args))
    with own_transformers(cpc):
        criterion = cpc.train.getCriterion(args, model.gEncoder.DOWNSAMPLING, 2, None)
    optimizer = torch.optim.Adam(list(criterion.parameters()) + list(model.parameters()), lr=args.learningRate,
                                 betas=(args.beta1, args.beta2), eps=args.epsilon)
    (folder / "checkpoint_args.json").write_text(json.dumps(vars(args), indent=2))
    logs = {"epoch": [], "iter": [], "saveStep": args.save_step, "logging_step": args.logging_step}
    for epoch in range(EPOCHS.get(name, 1)):
        model.train()
        criterion.train()
        losses = []
        for step in range(steps):
            batch = torch.stack([harmonic(args.sizeWindow, 100 * epoch + 10 * step + i, 110 + 30 * i)
                                 for i in range(args.batchSizeGPU)]).unsqueeze(1)
            c, z, label = model(batch, torch.zeros(args.batchSizeGPU, dtype=torch.long))
            all_losses, _ = criterion(c, z, label)
            all_losses.sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(all_losses.detach().mean(0).numpy())
        logs["epoch"].append(epoch)
        logs["iter"].append(steps)
        logs.setdefault("locLoss_train", []).append(np.mean(losses, 0).tolist())
        path = folder / f"checkpoint_{epoch}.pt"
        # best: None, as CPC_audio writes until a validation accuracy improves (none is run here).
        cpc.fl.save_checkpoint(model.state_dict(), criterion.state_dict(), optimizer.state_dict(), None, str(path))
        cpc.misc.save_logs(logs, str(folder / "checkpoint_logs.json"))
    return path


def reference_audio(args) -> torch.Tensor:
    """A 0.25 s signal, or one training window for a Transformer predictor (built for that many frames)."""
    return harmonic(args.sizeWindow if args.rnnMode == "transformer" else 4000, seed=12345).unsqueeze(0)


def peer_outputs(cpc, source: Path, audio: torch.Tensor | None = None) -> dict:
    """CPC_audio's own loading of ``source`` and its outputs on ``audio`` (default: the reference signal)."""
    criterion, optimizer_state = None, None
    state = torch.load(source, map_location="cpu") if source.is_file() else None
    if state is None or "gEncoder" in state:
        ckpt = Path(cpc.fl.getCheckpointData(str(source))[0]) if source.is_dir() else source
        model, _, _ = cpc.fl.loadModel([str(ckpt)])
        _, _, args = cpc.fl.getCheckpointData(str(ckpt.parent))
        if not getattr(args, "supervised", False) and args.cpc_mode != "none":
            with own_transformers(cpc):
                criterion = cpc.train.loadCriterion(str(ckpt), model.gEncoder.DOWNSAMPLING, 2, None)
        optimizer_state = torch.load(ckpt, map_location="cpu").get("optimizer")
    else:  # a release file, as hubconf.py reads it
        args = cpc.default_config()
        cpc.fl.loadArgs(args, argparse.Namespace(**state["config"]))
        model = cpc.CPCModel(cpc.fl.getEncoder(args), cpc.fl.getAR(args))
        missing, unexpected = model.load_state_dict(state["weights"], strict=False)
        if missing or unexpected:
            raise PeerError(f"{source}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if optimizer_state is not None:  # as cpc/train.py resumes
        params = list(criterion.parameters()) + list(model.parameters())
        torch.optim.Adam(params, lr=args.learningRate).load_state_dict(optimizer_state)
    audio = reference_audio(args) if audio is None else audio
    model.eval()
    out = {"audio": audio}
    with torch.no_grad():
        c, z, _ = model(audio.unsqueeze(1), None)
        out.update(encoder=z[0], context=c[0])
        if criterion is not None:
            criterion.eval()
            steps = args.nPredicts
            window = z.shape[1] - steps
            positives = [z[:, k:k + window].unsqueeze(1) for k in range(1, steps + 1)]
            scores = criterion.wPrediction(c[:, :window], positives)
            out["scores"] = torch.stack([s[0, 0] for s in scores])  # (steps, window)
    return out


def audiossl_outputs(path: Path, audio: torch.Tensor, with_scores: bool) -> dict:
    """audiossl's encoder and context features (and CPC scores of the positives) of a checkpoint."""
    sys.path.insert(0, str(REPO))
    from audiossl.checkpoint import load_checkpoint, load_model
    from audiossl.config import Config
    from audiossl.objectives import build_objective

    model = load_model(path)
    lengths = torch.tensor([audio.shape[1]])
    with torch.no_grad():
        z, c, _ = model(audio, lengths)
        out = {"encoder": z[0], "context": c[0]}
        if with_scores:
            ckpt = load_checkpoint(path)
            objective = build_objective(Config.from_dict(ckpt["config"]), model)
            objective.load_state_dict(ckpt["objective"])
            objective.eval()
            steps = objective.num_steps
            window = z.shape[1] - steps
            preds = objective.predict(c).view(steps, window, -1)
            out["scores"] = torch.stack([(preds[k] * z[0, k + 1:k + 1 + window]).sum(-1) for k in range(steps)])
    return out


# audiossl-born models for the export direction: settings over CPC_audio's layout (window 3200).
BORN = {
    "as_channel": {"encoder_norm": "channel", "context": "lstm", "context_dim": 12},
    "as_batch": {"encoder_norm": "batch", "context": "gru", "context_layers": 2, "cpc_predictor": "transformer"},
}


def audiossl_born(name: str, out: Path) -> Path:
    """A random audiossl CPC model (norm scales, shifts and running statistics too) saved as a checkpoint."""
    from audiossl.checkpoint import atomic_save
    from audiossl.config import build_config
    from audiossl.models.model import build_model
    from audiossl.objectives import build_objective
    from audiossl.train import initial_checkpoint

    torch.manual_seed(3)
    cfg = build_config(overrides={"encoder_channels": 16, "context_dim": 16, "cpc_steps": 2, "cpc_negatives": 4,
                                  "window_samples": 3200, **BORN[name]})
    model = build_model(cfg.model)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if ".norm." in key and key.endswith(("weight", "running_var")):
                tensor.uniform_(0.5, 1.5)
            elif ".norm." in key and key.endswith(("bias", "running_mean")):
                tensor.normal_(0, 0.1)
    path = out / f"{name}.pt"
    atomic_save(initial_checkpoint(cfg, model, build_objective(cfg, model)), path)
    return path


def largest_differences(ours: dict, theirs: dict) -> dict[str, float]:
    return {key: float((ours[key] - theirs[key]).abs().max()) for key in ("encoder", "context", "scores")
            if key in ours and key in theirs}


def check(cpc, fixtures: Path) -> int:
    """Convert each fixture both ways with audiossl and print the largest differences from CPC_audio's outputs."""
    sys.path.insert(0, str(REPO))
    from audiossl.cli import main as cli

    def audiossl(argv: list[str]) -> int:  # its resolved config and notes are not the point here
        with contextlib.redirect_stdout(io.StringIO()):
            return cli(argv)

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = [(name, fixtures / name, torch.load(fixtures / f"reference_{name}.pt")) for name in COMMITTED]
        make_run(cpc, "tf_pred", tmp)
        runs.append(("tf_pred", tmp / "tf_pred", peer_outputs(cpc, tmp / "tf_pred")))
        print(f"{'run':10} {'direction':34} {'encoder':>9} {'context':>9} {'scores':>9}")
        for name, folder, reference in runs:
            converted = tmp / f"{name}.pt"
            if audiossl(["convert", "--from", "cpc_audio", str(folder), "--out", str(converted)]):
                return 1
            rows = [("CPC_audio -> audiossl", audiossl_outputs(converted, reference["audio"], True), reference)]
            exported, release = tmp / f"{name}_exported", tmp / f"{name}_release.pt"
            if audiossl(["convert", "--to", "cpc_audio", str(converted), "--out", str(exported)]) or audiossl(
                    ["convert", "--to", "cpc_audio-release", str(converted), "--out", str(release)]):
                return 1
            ours = audiossl_outputs(converted, reference["audio"], True)
            rows.append(("audiossl -> CPC_audio folder", ours, peer_outputs(cpc, exported, reference["audio"])))
            rows.append(("audiossl -> CPC_audio release", ours, peer_outputs(cpc, release, reference["audio"])))
            for direction, a, b in rows:
                diffs = largest_differences(a, b)
                worst = max([worst, *diffs.values()])
                print(f"{name:10} {direction:34} " + " ".join(f"{diffs.get(k, float('nan')):9.2e}"
                                                             for k in ("encoder", "context", "scores")))
        for name in BORN:
            ours_path = audiossl_born(name, tmp)
            audio = harmonic(3200, seed=12345).unsqueeze(0)
            ours = audiossl_outputs(ours_path, audio, True)
            exported, release = tmp / f"{name}_exported", tmp / f"{name}_release.pt"
            if audiossl(["convert", "--to", "cpc_audio", str(ours_path), "--out", str(exported)]) or audiossl(
                    ["convert", "--to", "cpc_audio-release", str(ours_path), "--out", str(release)]):
                return 1
            for direction, source in (("audiossl -> CPC_audio folder", exported),
                                      ("audiossl -> CPC_audio release", release)):
                diffs = largest_differences(ours, peer_outputs(cpc, source, audio))
                worst = max([worst, *diffs.values()])
                print(f"{name:10} {direction:34} " + " ".join(f"{diffs.get(k, float('nan')):9.2e}"
                                                             for k in ("encoder", "context", "scores")))
    print(f"largest difference {worst:.2e} ({'within' if worst <= 1e-4 else 'OUTSIDE'} 1e-4)")
    return 0 if worst <= 1e-4 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, type=Path, help="a CPC_audio checkout")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="train the tiny runs and write their folders and references")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "cpc_audio")
    p.add_argument("--runs", default=",".join(COMMITTED), help=f"comma-separated, of {', '.join(RUNS)}")
    p = sub.add_parser("forward", help="CPC_audio's outputs of a folder, checkpoint or release file")
    p.add_argument("source", type=Path)
    p.add_argument("--audio", type=Path, required=True, help="a reference_<run>.pt (its 'audio' is read)")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("check", help="audiossl convert both ways against CPC_audio's outputs")
    p.add_argument("--fixtures", type=Path, default=REPO / "tests" / "data" / "cpc_audio")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        cpc = import_peer(args.peer.resolve())
        if args.command == "make":
            for name in args.runs.split(","):
                if name not in RUNS:
                    parser.error(f"unknown run {name!r}; known: {', '.join(RUNS)}")
                if (args.out / name).exists():
                    shutil.rmtree(args.out / name)
                last = make_run(cpc, name, args.out)
                reference = peer_outputs(cpc, last.parent)
                torch.save(reference, args.out / f"reference_{name}.pt")
                print(f"{args.out / name}: {', '.join(sorted(p.name for p in (args.out / name).iterdir()))}; "
                      f"reference_{name}.pt: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in reference.items()))
            return 0
        if args.command == "forward":
            audio = torch.load(args.audio)["audio"]
            torch.save(peer_outputs(cpc, args.source, audio), args.out)
            return 0
        return check(cpc, args.fixtures)
    except PeerError as e:
        print(f"cpc_audio_fixture: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

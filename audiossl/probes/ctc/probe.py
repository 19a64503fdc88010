"""CTC recognition probes: phones or sentencepiece pieces from frozen features.

A small head reads frozen features and is trained with CTC (Graves et al.
2006; ``torch.nn.CTCLoss``, blank 0) to emit each utterance's unit sequence:

- ``ctc-phone``: the phone sequence of the frame alignments (runs merged,
  silence dropped; see :mod:`~audiossl.probes.ctc.targets`), scored by the phone
  error rate (PER).
- ``ctc-subword``: sentencepiece pieces of the transcript, scored by the
  character and word error rates (CER over the characters of the text,
  spaces included; WER over its words) once the pieces are decoded to text.

Heads: ``linear`` (one projection per frame: the CTC analogue of the linear
probes) or ``bilstm`` (``lstm_layers`` bidirectional LSTM layers of ``hidden``
units per direction, then the projection), as the SUPERB PR/ASR tasks (Yang
et al. 2021) put a linear or BiLSTM head on frozen upstream features. Unit
``k`` is output class ``k + 1``. Inputs are standardized with the training
set's per-dimension statistics; AdamW with a cosine-decayed learning rate,
gradient norm clipped at 5. As for the linear probes, a seeded tenth of the
training utterances is held out to choose the epoch (lowest held-out CTC
loss; early stopping after ``patience`` epochs without a lower one). The
loss, not the error rate, chooses: through CTC's early all-blank phase the
error rate sits near 100 % or jumps about while the loss falls steadily.
Decoding is greedy: the best class per frame, repeats collapsed, blanks
dropped. Error rates are total edits (Levenshtein distance)
over total reference length, on the test split.

CTC can only emit ``U`` units with repeats ``R`` (equal neighbours need a
blank between them) in at least ``U + R`` frames: utterances with fewer
feature frames are left out of training and test and counted.

The head, its training, decoding and error rates are
:mod:`audiossl.probes.ctc.head`'s; this module holds the settings, the two
probes over layers and floors, and their report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from audiossl.features import FeatureSet
from audiossl.probes.ctc.head import DEFAULT_LR, CTCSettings, error_rate, min_ctc_frames, train_ctc_head, transcribe
from audiossl.probes.ctc.targets import (
    load_transcripts,
    normalize_text,
    phone_sequence,
    silence_class,
    train_units,
    transcripts_for,
)
from audiossl.probes.runner import (
    RunOptions,
    Score,
    listing,
    open_layers,
    phone_labels,
    resolve_split,
    row_name,
    score_sets,
    scores,
    with_floors,
)
from audiossl.probes.tasks import ProbeError, at_label_rate, heldout_split

__all__ = [
    "CTCSettings",
    "DEFAULT_LR",
    "ctc_phone_probe",
    "ctc_subword_probe",
    "format_ctc_report",
]



def _run(task: str, sets: list[FeatureSet], train_ids: list[str], test_ids: list[str],
         targets: Mapping[str, np.ndarray], num_classes: int, score: Callable[[list[str], list[np.ndarray]], dict],
         settings: CTCSettings, device: torch.device, progress: bool) -> dict:
    """Train and test a head on every feature set; report rows and the utterance counts."""
    fit_ids, heldout_ids = heldout_split(train_ids, settings.heldout_fraction, settings.seed)

    def train_and_test(features: FeatureSet) -> dict:
        parts, missing, short = {}, [], []
        for what, ids in (("training", fit_ids), ("held-out", heldout_ids), ("test", test_ids)):
            missing += [u for u in ids if u not in features.num_frames]
            present = [u for u in ids if u in features.num_frames]
            short += [u for u in present if features.num_frames[u] < min_ctc_frames(targets[u])]
            parts[what] = [u for u in present if features.num_frames[u] >= min_ctc_frames(targets[u])]
        for what in ("training", "test"):
            if not parts[what]:
                raise ProbeError(f"{features.folder}: no {what} utterance has features with the frames CTC needs "
                                 f"({len(missing)} without features, {len(short)} too short)")
        load = {what: [features.load(u) for u in ids] for what, ids in parts.items()}
        trained = train_ctc_head(load["training"], [targets[u] for u in parts["training"]], num_classes, settings,
                                 device, progress, f"{task} {features.name}", load["held-out"],
                                 [targets[u] for u in parts["held-out"]])
        hyps, test_loss = transcribe(trained.head, trained.mean, trained.std, load["test"],
                                     [targets[u] for u in parts["test"]])
        return {**score(parts["test"], hyps),
                "train_utterances": len(parts["training"]), "heldout_utterances": len(parts["held-out"]),
                "test_utterances": len(parts["test"]), "epochs": trained.epochs, "best_epoch": trained.best_epoch,
                "missing": {"features": listing(missing), "too_short": listing(short)},
                "train_loss": trained.history["train_loss"][trained.best_epoch - 1], "test_loss": test_loss,
                "history": trained.history}

    return {"task": task, "train_utterances": len(train_ids), "heldout_utterances": len(heldout_ids),
            "test_utterances": len(test_ids), "settings": asdict(settings), "results": score_sets(sets, train_and_test)}


def ctc_phone_probe(features_dir: str | Path, alignments: str | Path, layers: Sequence[str] = ("context",), *,
                    phones: str | Path | None = None, keep_silence: bool = False,
                    train_split: str | Path | None = None, test_split: str | Path | None = None,
                    settings: CTCSettings | None = None, options: RunOptions = RunOptions()) -> dict:
    """CTC phone recognition from each layer and baseline; phone error rate on the test split.

    Every feature set is read at the alignments' 10 ms (the frame-rate rule of
    :mod:`audiossl.probes.tasks`: 20 ms frames repeated twice), so each has
    the frames per phone the labels have; ``frame_rate`` in each result row
    says how.

    Args:
        features_dir: an ``audiossl extract`` output folder (a frame rate
            whose ratio to 100 Hz is a whole number, either way).
        alignments: ``converted_aligned_phones.txt``; collapsed into phone sequences.
        layers: sub-folders of ``features_dir`` to probe.
        phones: the phone inventory: the number of classes and the silence
            class (``SIL``); without it, the largest label + 1 and class 0.
        keep_silence: keep silence as a unit instead of dropping it.
        train_split, test_split: utterance id lists; neither: every fifth
            labelled utterance of each speaker is held out.
        settings: the head and its training.
        options: the floors (``mfcc``, ``logmel``) probed beside the layers
            and their audio, the device, the decoding workers, the progress bars.

    Returns:
        The report (see :func:`format_ctc_report`), a JSON-ready dict.
    """
    settings = settings or CTCSettings()
    layer_sets = open_layers(features_dir, layers)
    at_label_rate(layer_sets)  # a rate that cannot be is refused before anything else is read
    labels, num_phones = phone_labels(alignments, phones)
    silence = None if keep_silence else silence_class(phones)
    train_ids, test_ids = resolve_split(layer_sets[0], train_split, test_split, usable=labels)
    unlabelled = [u for u in train_ids + test_ids if u not in labels]
    train_ids, test_ids = [u for u in train_ids if u in labels], [u for u in test_ids if u in labels]
    targets = {u: phone_sequence(labels[u], silence) + 1 for u in train_ids + test_ids}
    sets = at_label_rate(with_floors(layer_sets, train_ids + test_ids, options))

    def score(ids: list[str], hyps: list[np.ndarray]) -> dict:
        return {"per": error_rate([(targets[u], h) for u, h in zip(ids, hyps)])}

    report = _run("ctc-phone", sets, train_ids, test_ids, targets, num_phones + 1, score, settings, options.device,
                  options.progress)
    return {**report, "scores": scores(Score("per", "PER", True)), "metrics": ["per"], "unit": "phone",
            "num_units": num_phones - (silence is not None), "silence": silence, "unlabelled": listing(unlabelled),
            "frame_rate": report["results"][0]["frame_rate"]}


def ctc_subword_probe(features_dir: str | Path, units_path: str | Path, layers: Sequence[str] = ("context",), *,
                      vocab_size: int = 100, sp_type: str = "unigram", transcripts: Sequence[str | Path] = (),
                      train_split: str | Path | None = None, test_split: str | Path | None = None,
                      settings: CTCSettings | None = None, options: RunOptions = RunOptions()) -> dict:
    """CTC recognition of sentencepiece pieces; character and word error rates on the test split.

    Args:
        features_dir: an ``audiossl extract`` output folder (any frame rate).
        units_path: the sentencepiece model file, trained on the training
            transcripts if absent, reused if made with the same settings and text.
        layers: sub-folders of ``features_dir`` to probe.
        vocab_size: most pieces (``<unk>`` included).
        sp_type: ``unigram`` or ``bpe``.
        transcripts: transcript files or folders; none: the ``*.trans.txt``
            beside each utterance's audio.
        train_split, test_split: utterance id lists; neither: every fifth
            transcribed utterance of each speaker is held out.
        settings: the head and its training.
        options: the floors (``mfcc``, ``logmel``) probed beside the layers
            and their audio, the device, the decoding workers, the progress bars.

    Returns:
        The report (see :func:`format_ctc_report`), a JSON-ready dict.
    """
    settings = settings or CTCSettings()
    layer_sets = open_layers(features_dir, layers)
    reference = layer_sets[0]
    texts = load_transcripts(transcripts) if transcripts else transcripts_for(reference.utterances)
    if not texts:
        raise ProbeError(f"no transcripts found for the utterances of {reference.folder}; give their files")
    train_ids, test_ids = resolve_split(reference, train_split, test_split, usable=texts)
    untranscribed = [u for u in train_ids + test_ids if u not in texts]
    train_ids, test_ids = [u for u in train_ids if u in texts], [u for u in test_ids if u in texts]
    units = train_units([texts[u] for u in train_ids], units_path, vocab_size, sp_type)
    targets = {u: np.array(units.encode(texts[u]), dtype=np.int64) + 1 for u in train_ids + test_ids}
    sets = with_floors(layer_sets, train_ids + test_ids, options)

    def score(ids: list[str], hyps: list[np.ndarray]) -> dict:
        decoded = [normalize_text(units.decode(h - 1)) for h in hyps]
        return {"cer": error_rate([(texts[u], d) for u, d in zip(ids, decoded)]),
                "wer": error_rate([(texts[u].split(), d.split()) for u, d in zip(ids, decoded)]),
                "examples": [{"id": u, "reference": texts[u], "decoded": d} for u, d in list(zip(ids, decoded))[:3]]}

    report = _run("ctc-subword", sets, train_ids, test_ids, targets, units.size + 1, score, settings,
                  options.device, options.progress)
    return {**report, "scores": scores(Score("cer", "CER", True), Score("wer", "WER", True)),
            "metrics": ["cer", "wer"], "unit": f"{sp_type} piece", "num_units": units.size,
            "units": str(units_path), "untranscribed": listing(untranscribed)}


def format_ctc_report(report: dict) -> str:
    """The report as a table: error rates, losses and utterance counts per feature set."""
    metrics, settings = report["metrics"], report["settings"]
    head = settings["head"] + (f" {settings['lstm_layers']}x{settings['hidden']}" if settings["head"] == "bilstm"
                               else "")
    lines = [f"{report['task']} probe ({head} head, {report['num_units']} {report['unit']}s + blank): "
             f"{report['train_utterances']} training utterances ({report['heldout_utterances']} held out to choose "
             f"the epoch) / {report['test_utterances']} test",
             f"{'features':<16}{'dim':>5}" + "".join(f"{m.upper():>8}" for m in metrics)
             + f"{'train loss':>12}{'test loss':>11}{'epoch':>8}{'seconds':>9}"]
    for row in report["results"]:
        name = row_name(row)
        lines.append(f"{name:<16}{row['dim']:>5}" + "".join(f"{row[m]:>8.1%}" for m in metrics)
                     + f"{row['train_loss']:>12.3f}{row['test_loss']:>11.3f}"
                     f"{str(row['best_epoch']) + '/' + str(row['epochs']):>8}{row['seconds']:>9.1f}")
    lines.append("losses: CTC per target unit; epoch: the one kept (lowest held-out loss) / epochs run")
    for key in ("unlabelled", "untranscribed"):
        if report.get(key, {}).get("count"):
            ids = report[key]
            lines.append(f"dropped: {ids['count']} {key} split utterance(s), e.g. {', '.join(ids['ids'])}")
    for row in report["results"]:
        for why, ids in row["missing"].items():
            if ids["count"]:
                lines.append(f"dropped from {row['features']}: {ids['count']} utterance(s) "
                             f"{'without features' if why == 'features' else 'too short for their units'}, "
                             f"e.g. {', '.join(ids['ids'])}")
    return "\n".join(lines)

"""``audiossl report EXP_DIR``: an experiment's figures and a markdown page showing them.

Reads what ``audiossl train``, ``extract`` and ``probe`` left in an experiment
folder (:mod:`audiossl.report.experiment`) and writes ``EXP_DIR/report/``:
``report.md`` and one PNG per figure (:mod:`audiossl.report.figures`). A
figure whose inputs are missing is listed as "not available (missing ...)"
instead; nothing is required but the folder.

- training curves: TensorBoard scalars ``train/loss``, ``train/lr``, and for
  CPC ``accuracy_per_step/accuracy_k<k>`` and ``mi_bound_per_step/mi_bound_k<k>``
  (CPC_audio logs the same as ``locAcc_train``/``locLoss_train``); without
  event files, ``train_log.tsv`` gives loss and learning rate.
- probe scores: every ``probe_*/metrics.json``, the model beside the floors.
- phone confusion: counts a probe stored (a ``confusion`` matrix in its
  metrics), else a quick linear classifier fitted here on at most
  ``max_utterances`` training utterances; its accuracy is an indication,
  the phone probe's number is the result.
- speakers: PCA of per-utterance mean-pooled features (test split when known),
  each dimension standardized first.
- one utterance: its log-mel spectrogram above the learned features, phones on top.
- discrete units: every ``probe_units*/metrics.json`` (``audiossl probe units``):
  purity, PNMI and one-hot ABX per k, the model beside k-means on the floors;
  and the units of one utterance (the model with the fewest units among
  ``EXP_DIR/units*/``, assigned here) drawn over its spectrogram.

Features come from an extraction folder of ``EXP_DIR`` when it holds the
utterances, else they are computed from the checkpoint. Phone alignments and
splits are looked for in ``labels``, then in the corpus folder and the
folders above it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from audiossl.data.alignments import labels_for_frames
from audiossl.data.audio import read_audio
from audiossl.probes.tasks import LABEL_RATE, default_split
from audiossl.report import figures, spectrograms
from audiossl.report.analysis import linear_confusion, pca_2d
from audiossl.report.experiment import (
    Labels,
    LayerFeatures,
    PageInputs,
    Unavailable,
    find_feature_folder,
    per_step_curves,
    read_probe_scores,
    read_scalars,
    read_train_log,
)

__all__ = ["SECTIONS", "make_report"]


def _spread(ids: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` ids, evenly spaced through ``ids`` (so every speaker keeps some)."""
    if len(ids) <= limit:
        return list(ids)
    return [ids[int(i * len(ids) / limit)] for i in range(limit)]


def _md_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _segments(labels: np.ndarray, names: Sequence[str], rate: float = LABEL_RATE) -> list[tuple[float, float, str]]:
    """Runs of equal labels as ``(start s, end s, name)``."""
    change = np.flatnonzero(np.diff(labels)) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(labels)]
    return [(s / rate, e / rate, names[labels[s]]) for s, e in zip(starts, ends)]


def _training(inp: PageInputs, path: Path) -> list[str]:
    if inp.pretrain is None:
        raise Unavailable("missing training output: no checkpoint.pt or tb/ in EXP_DIR/pretrain or EXP_DIR")
    tb, log = inp.pretrain / "tb", inp.pretrain / "train_log.tsv"
    scalars = read_scalars(tb) if tb.is_dir() else {}
    if "train/loss" not in scalars and log.is_file():
        scalars = {**read_train_log(log), **scalars}
    if not scalars:
        raise Unavailable(f"missing training scalars: no TensorBoard events in `{tb}`, no `{log}`")
    config_path = inp.pretrain / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    per_step = {name: per_step_curves(scalars, name) for name in ("accuracy", "loss", "mi_bound")}
    figures.plot_training(path, scalars.get("train/loss"), scalars.get("train/lr"), scalars.get("train/accuracy"),
                          per_step["accuracy"], per_step["mi_bound"], perplexity=scalars.get("train/prob_perplexity"),
                          title=f"{config.get('objective', 'pretraining')} training: {inp.exp_dir.name}",
                          unmasked_accuracy=scalars.get("train/unmasked_accuracy"))
    rows = [(tag.split("/", 1)[1], int(steps[-1]), f"{values[-1]:.4g}")
            for tag, (steps, values) in sorted(scalars.items()) if tag.startswith("train/")]
    text = [f"Scalars from `{tb}`." if tb.is_dir() else f"Scalars from `{log}`.", "",
            *_md_table(("quantity", "last step", "last value"), rows)]
    if per_step["accuracy"]:
        last = {name: {k: curve[1][-1] for k, curve in curves.items()} for name, curves in per_step.items()}
        rows = [(k, _pct(last["accuracy"][k]), *(f"{last[name][k]:.3f}" if k in last[name] else "-"
                                                 for name in ("loss", "mi_bound"))) for k in sorted(last["accuracy"])]
        text += ["Per prediction step at the last logged step:", "",
                 *_md_table(("k", "accuracy %", "loss", "MI bound (nats)"), rows)]
    if config:
        text += ["<details><summary>configuration</summary>", "", "```yaml",
                 yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return text


def _probes(inp: PageInputs, path: Path) -> list[str]:
    scores, notes = read_probe_scores(inp.exp_dir)
    if not scores:
        raise Unavailable("missing probe results: no EXP_DIR/probe_<kind>_<source>/metrics.json"
                          + (f" ({'; '.join(notes)})" if notes else ""))
    table: dict[str, dict[str, float]] = {}
    for score in sorted(scores, key=lambda s: (s.lower_is_better, s.group)):
        table.setdefault(score.group, {})[score.source] = score.value
    lower = [s.group for s in scores if s.lower_is_better]
    chance = {s.group: s.chance for s in scores if s.chance is not None}
    figures.plot_probe_scores(path, table, lower, chance)
    sources = figures.order_sources({s.source for s in scores})
    rows = [(f"{group} ({'lower' if group in lower else 'higher'} is better)",
             *(_pct(values.get(s)) for s in sources), _pct(chance.get(group))) for group, values in table.items()]
    return ["Test scores in %, from the probes' `metrics.json`.", "",
            *_md_table(("probe", *sources, "majority class"), rows), *(f"- {note}" for note in notes), ""]


def _stored_confusion(inp: PageInputs) -> tuple[np.ndarray, list[str], str] | None:
    """Confusion counts a phone probe wrote into its metrics.json, if any."""
    for path in sorted(inp.exp_dir.glob("probe_phone*_model/metrics.json")):
        metrics = json.loads(path.read_text())
        if isinstance(metrics, dict) and "confusion" in metrics:
            counts = np.array(metrics["confusion"], dtype=np.int64)
            names = metrics.get("phones") or (inp.labels.phones if inp.labels else None)
            names = names if names and len(names) == len(counts) else [str(c) for c in range(len(counts))]
            return counts, names, f"Counts stored by the probe in `{path}`."
    return None


def _frames(loaded: dict[str, np.ndarray], labels: Labels, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(loaded[u][: len(y)], y) for u in ids if u in loaded
             for y in [labels_for_frames(labels.alignments[u], len(loaded[u]), u)]]
    if not pairs:
        raise Unavailable("missing labelled frames: no utterance has both features and alignments")
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def _confusion(inp: PageInputs, path: Path) -> list[str]:
    stored = _stored_confusion(inp)
    if stored is not None:
        counts, names, how = stored
    else:
        labels, feats = inp.need_labels(), inp.need_features()
        if abs(feats.frame_rate - LABEL_RATE) > 1e-6:
            raise Unavailable(f"missing 100 Hz features: {feats.describe} has {feats.frame_rate:g} frames/s, "
                              f"the phone labels {LABEL_RATE:g}")
        usable = {u: inp.speaker(u) for u in inp.utterances if u in labels.alignments}
        if labels.train_ids is not None and labels.test_ids is not None:
            train, test = [u for u in labels.train_ids if u in usable], [u for u in labels.test_ids if u in usable]
        else:
            train, test = default_split(usable)
        train, test = _spread(train, inp.max_utterances), _spread(test, max(inp.max_utterances // 3, 1))
        if not train or not test:
            raise Unavailable(f"missing labelled utterances: {len(train)} training and {len(test)} test utterances "
                              "have alignments")
        loaded = feats.load(train + test)
        (train_x, train_y), (test_x, test_y) = _frames(loaded, labels, train), _frames(loaded, labels, test)
        names = labels.phones
        counts = linear_confusion(train_x, train_y, test_x, test_y, len(names))
        how = (f"A linear classifier fitted here on {len(train)} training utterances ({len(train_x):,} frames) of "
               f"{feats.describe}, tested on {len(test)} utterances ({len(test_x):,} frames); the phone probe's "
               "accuracy above is the reference number.")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    keep = np.flatnonzero(counts.sum(0) + counts.sum(1))
    figures.plot_confusion(path, counts[np.ix_(keep, keep)], [names[c] for c in keep],
                           title=f"phone confusion (frame accuracy {accuracy:.1%})")
    off = counts * (1 - np.eye(len(counts), dtype=counts.dtype))
    worst = [divmod(int(i), len(counts)) for i in np.argsort(off, axis=None)[::-1][:10] if off.flat[i] > 0]
    rows = [(names[t], names[p], int(counts[t, p]), _pct(counts[t, p] / counts[t].sum())) for t, p in worst]
    return [how, "", f"Frame accuracy {accuracy:.1%}. Rows are normalized: a cell is the share of the true phone's "
            "frames given each prediction.", "", "Most frequent confusions:", "",
            *_md_table(("true", "predicted", "frames", "% of the true phone"), rows)]


def _speakers(inp: PageInputs, path: Path) -> list[str]:
    feats = inp.need_features()
    labels = inp.labels
    split = labels is not None and labels.test_ids is not None
    ids = [u for u in labels.test_ids if u in inp.utterances] if split else list(inp.utterances)
    loaded = feats.load(_spread(ids, inp.max_utterances))
    ids = [u for u in loaded if len(loaded[u])]
    if len(ids) < 3:
        raise Unavailable(f"missing utterances: {len(ids)} with features, the projection needs 3")
    points, explained = pca_2d(np.stack([loaded[u].mean(0) for u in ids]))
    speakers = [inp.speaker(u) for u in ids]
    figures.plot_projection(path, points, speakers, explained,
                            title=f"mean-pooled {feats.layer} features, PCA")
    return [f"{len(ids)} utterances ({'test split' if split else 'corpus'}) of {len(set(speakers))} speakers; "
            f"each the mean of its frames of {feats.describe}, every dimension standardized; the two components "
            f"explain {100 * explained[0]:.1f} % and {100 * explained[1]:.1f} % of the variance.", ""]


def _chosen_utterance(inp: PageInputs) -> str:
    """The utterance to draw: asked for, else the first of the test split, else of the corpus."""
    if not inp.utterances:
        raise Unavailable("missing the corpus: pass --data, or keep the training folder's manifest.tsv")
    labels = inp.labels
    test = [u for u in (labels.test_ids or []) if u in inp.utterances] if labels else []
    utt_id = inp.utterance or (test or list(inp.utterances))[0]
    if utt_id not in inp.utterances:
        raise Unavailable(f"missing utterance {utt_id!r} in the corpus {inp.corpus}")
    return utt_id


def _logmel(utt) -> tuple[np.ndarray, float]:
    """(frames, 80) log-mel spectrogram of an utterance and its duration in seconds."""
    from audiossl.models.frontends import LogMelFrontend

    wav = read_audio(utt.path, utt.sample_rate)
    with torch.no_grad():
        logmel, _ = LogMelFrontend(utt.sample_rate)(wav[None], torch.tensor([len(wav)]))  # (1, T, 80)
    return logmel[0].numpy(), len(wav) / utt.sample_rate


def _utterance(inp: PageInputs, path: Path) -> list[str]:
    utt_id = _chosen_utterance(inp)
    labels = inp.labels
    feats = inp.need_features()
    x = feats.load([utt_id]).get(utt_id)
    if x is None:
        raise Unavailable(f"missing features of {utt_id!r} in {feats.describe}")
    utt = inp.utterances[utt_id]
    logmel, seconds = _logmel(utt)
    segments = _segments(labels.alignments[utt_id], labels.phones) if labels and utt_id in labels.alignments else None
    spectrograms.plot_utterance(path, logmel, LABEL_RATE, x, feats.frame_rate, segments,
                                title=f"{utt_id} (speaker {utt.speaker}, {seconds:.2f} s)",
                                feats_label=f"{feats.layer} features", sample_rate=utt.sample_rate)
    phones = f"phones from `{labels.folder}`" if segments else "no phone alignment for it"
    return [f"Utterance `{utt_id}` from {inp.corpus}; features of {feats.describe} ({len(x)} frames of "
            f"{x.shape[1]} dims); {phones}.", ""]


def _unit_reports(exp_dir: Path) -> list[tuple[Path, dict]]:
    """``probe_units*/metrics.json`` reports, by k."""
    found = []
    for path in sorted(exp_dir.glob("probe_units*/metrics.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("task") == "units" and report.get("results"):
            found.append((path, report))
    return sorted(found, key=lambda item: item[1]["k"])


def _units(inp: PageInputs, path: Path) -> list[str]:
    found = _unit_reports(inp.exp_dir)
    if not found:
        raise Unavailable("missing units results: no EXP_DIR/probe_units*/metrics.json (audiossl probe units)")
    table: dict[int, dict[str, dict]] = {}
    rows = []
    for _, report in found:
        for row in report["results"]:
            source = "model" if row["role"] == "model" else row["features"]
            table.setdefault(report["k"], {})[source] = {
                "PNMI": row["pnmi"], "phone purity": row["phone_purity"], "cluster purity": row["cluster_purity"],
                "ABX across": row["across"]}
            rows.append((report["k"], f"{row['features']}" + (" (floor)" if row["role"] != "model" else ""),
                         row["units_used"], _pct(row["phone_purity"]), _pct(row["cluster_purity"]),
                         f"{row['pnmi']:.3f}", _pct(row["within"]), _pct(row["across"])))
    figures.plot_unit_quality(path, table)
    first = found[0][1]
    return [f"k-means units of `{first['layer']}` ({', '.join(f'`{p.parent}`' for p, _ in found)}) against the "
            f"phone labels of {first['utterances']} utterances; the floors are k-means with the same settings on "
            "MFCC and log-mel frames of the same utterances. Purity and ABX in %; PNMI (HuBERT's phone-normalized "
            "mutual information) from 0 to 1.", "",
            *_md_table(("k", "features", "units used", "phone purity", "cluster purity", "PNMI", "ABX within",
                        "ABX across"), rows)]


def _units_utterance(inp: PageInputs, path: Path) -> list[str]:
    from audiossl.extract import FeatureError, FeatureSet
    from audiossl.units.fit import UnitModel, UnitsError, check_features

    def check_source(model: UnitModel, features: FeatureSet) -> bool:
        try:
            check_features(model, features)
        except UnitsError:
            return False
        return True

    models = []
    for record in sorted(inp.exp_dir.glob("units*/kmeans.json")):
        try:
            models.append(UnitModel(record.parent))
        except UnitsError:
            continue
    if not models:
        raise Unavailable("missing units: no EXP_DIR/units*/kmeans.json (audiossl units fit)")
    model = min(models, key=lambda m: m.k)
    utt_id = _chosen_utterance(inp)
    # The features the units were fitted on, else another extraction of the layer, else the checkpoint itself.
    folder = None
    for candidate in (model.record.get("features"), find_feature_folder(inp.exp_dir, model.layer)):
        try:
            candidate = candidate if isinstance(candidate, FeatureSet) else FeatureSet(candidate) if candidate else None
        except FeatureError:
            continue
        if candidate is not None and utt_id in candidate.num_frames and check_source(model, candidate):
            folder = candidate
            break
    checkpoint = inp.pretrain / "checkpoint.pt" if inp.pretrain else None
    if not (checkpoint and checkpoint.is_file() and Path(model.source.get("checkpoint", "")) == checkpoint.resolve()):
        checkpoint = None
    if folder is None and checkpoint is None:
        raise Unavailable(f"missing features of {utt_id!r}: no extraction of the {model.layer} layer the units of "
                          f"`{model.folder}` were fitted on holds it, and they do not come from this checkpoint")
    feats = LayerFeatures(folder, checkpoint, model.layer, inp.utterances, inp.device)
    x = feats.load([utt_id]).get(utt_id)
    if x is None:
        raise Unavailable(f"missing features of {utt_id!r} in {feats.describe}")
    units = model.assign(x)
    utt = inp.utterances[utt_id]
    logmel, seconds = _logmel(utt)
    labels = inp.labels
    segments = _segments(labels.alignments[utt_id], labels.phones) if labels and utt_id in labels.alignments else None
    spectrograms.plot_units_utterance(path, logmel, LABEL_RATE, units, feats.frame_rate, model.k, segments,
                                      title=f"{utt_id} (speaker {utt.speaker}, {seconds:.2f} s): {model.k} units",
                                      sample_rate=utt.sample_rate)
    runs = int(np.count_nonzero(np.diff(units))) + 1 if len(units) else 0
    return [f"Utterance `{utt_id}`: the {model.k} k-means units of `{model.folder}` assigned to {feats.describe} "
            f"({len(units)} frames, {runs} runs of one unit, {len(np.unique(units))} distinct units).", ""]


SECTIONS = (("Training curves", "training_curves.png", _training),
            ("Probe results", "probe_scores.png", _probes),
            ("Phone confusion", "phone_confusion.png", _confusion),
            ("Speakers", "speaker_pca.png", _speakers),
            ("One utterance", "utterance.png", _utterance),
            ("Discrete units", "units_quality.png", _units),
            ("Units of one utterance", "units_utterance.png", _units_utterance))


def make_report(exp_dir: str | Path, out: str | Path | None = None, utterance: str | None = None,
                data: str | Path | None = None, labels: str | Path | None = None, layer: str = "context",
                device: str | torch.device = "cpu", max_utterances: int = 300) -> dict[str, str]:
    """Write ``report.md`` and the figures whose inputs exist.

    Args:
        exp_dir: a recipe's run folder or an ``audiossl train`` folder.
        out: where to write (default ``EXP_DIR/report``).
        utterance: the utterance to draw (default: the first of the test
            split, else of the corpus).
        data: the corpus folder or manifest (default: the training manifest).
        labels: a folder with ``converted_aligned_phones.txt`` (and
            ``phones.txt``, the split lists).
        layer: which layer's features to show.
        device: where the model runs when features are computed.
        max_utterances: at most this many utterances feed the confusion
            classifier (a third as many test it) and the projection.

    Returns:
        ``{figure file: "written" or why it is not available}``; the page is
        ``out / "report.md"``.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"{exp_dir}: no such experiment folder")
    out = Path(out) if out else exp_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    inp = PageInputs(exp_dir, data, labels, utterance, layer, torch.device(device), max_utterances)
    lines = [f"# Report: {exp_dir.resolve().name}", "",
             f"Made by `audiossl report` from `{exp_dir}`" + (f"; corpus {inp.corpus}." if inp.corpus else "."), ""]
    outcome = {}
    for title, filename, build in SECTIONS:
        lines += [f"## {title}", ""]
        try:
            text = build(inp, out / filename)
        except Unavailable as e:
            outcome[filename] = str(e)
        except ValueError as e:  # inputs that exist but do not fit (CorpusError, FeatureError ... are ValueErrors)
            outcome[filename] = f"error: {e}"
        else:
            outcome[filename] = "written"
            lines += [f"![{title}]({filename})", "", *text]
            continue
        (out / filename).unlink(missing_ok=True)  # never show a stale figure
        lines += [f"Figure not available ({outcome[filename]}).", ""]
    page = out / "report.md"
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    tmp.replace(page)
    return outcome

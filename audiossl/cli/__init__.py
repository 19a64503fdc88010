"""``audiossl <command>``: thin handlers that parse, build a config, call the library.

Exit codes: 0 done; 1 the run failed (``audiossl train``: non-finite losses,
unreadable data mid-run; any command: the disk filled up); 2 a user error,
found before any work; 3 and 4 ``audiossl train`` stopped early with a
checkpoint, by its time budget or by a signal (see :mod:`audiossl.stopping`);
130 interrupted (Ctrl-C twice during training, once elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys

import yaml

from audiossl.allocator import reexec_under_tcmalloc
from audiossl.atomic import DiskFullError
from audiossl.audio import AudioError
from audiossl.checkpoint import CheckpointError
from audiossl.config import ConfigError, build_config, parse_overrides
from audiossl.data.corpus import CorpusError
from audiossl.discrete import STANDARDIZE, UnitsError
from audiossl.extract import FeatureError
from audiossl.lock import FolderLocked
from audiossl.probes import BASELINES, ProbeError
from audiossl.resume import ResumeError
from audiossl.stopping import EXIT_CODES, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

# Errors that are the user's to fix: one line, no traceback.
USER_ERRORS = (ConfigError, CorpusError, AudioError, CheckpointError, FeatureError, ProbeError, FileNotFoundError,
               ResumeError, FolderLocked, UnitsError)


def _config_from(args: argparse.Namespace):
    return build_config(args.config, parse_overrides(args.overrides))


def _print_config(cfg) -> None:
    print("# resolved config")
    print(yaml.safe_dump(cfg.flat(), sort_keys=False).rstrip())


def cmd_prepare(args: argparse.Namespace) -> int:
    from audiossl.data.corpus import CorpusError, problems_path, scan_corpus, write_manifest, write_problems

    utterances, problems = scan_corpus(args.data, args.speaker_level, decode=not args.header_only)
    for p in problems:
        print(f"skipped {p.path}: {p.reason}")
    if args.strict and problems:
        raise CorpusError(f"{args.data}: {len(problems)} unusable file(s) and --strict; no manifest written")
    write_problems(problems, problems_path(args.out))
    write_manifest(utterances, args.out)
    hours = sum(u.num_samples / u.sample_rate for u in utterances) / 3600
    speakers = len({u.speaker for u in utterances})
    print(f"{args.out}: {len(utterances)} utterances, {speakers} speakers, {hours:.2f} h"
          + (f"; {len(problems)} file(s) skipped, listed in {problems_path(args.out)}" if problems else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from audiossl.train import TrainingError, train

    cfg = _config_from(args)
    if os.environ.get("RANK", "0") == "0":
        _print_config(cfg)
    try:
        summary = train(cfg, args.data, args.exp_dir, progress=not args.no_progress, strict=args.strict)
    except TrainingError as e:
        print(f"audiossl train: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"audiossl train: interrupted twice: stopped at once, without saving (the last checkpoint is in "
              f"{args.exp_dir})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if os.environ.get("RANK", "0") == "0" and summary["stopped"] is None:
        metrics = {k: round(v, 4) for k, v in summary["metrics"].items() if "_k" not in k}
        print(f"done at step {summary['step']}: {json.dumps(metrics)}; checkpoint {summary['checkpoint']}")
    return EXIT_CODES[summary["stopped"]]


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from audiossl.bench import benchmark, format_loader, format_result, loader_benchmark

    cfg = _config_from(args)
    if args.compile:
        cfg.train.compile = True
    if args.threads:
        torch.set_num_threads(args.threads)
    loader = None
    if args.data is not None:  # first: a bad corpus fails before the model is timed
        print(f"# data loader on {args.data} (a folder is scanned first)", flush=True)
        loader = loader_benchmark(cfg, args.data, args.workers, seconds=args.loader_seconds)
    result = benchmark(cfg, steps=args.steps, warmup=args.warmup, device=args.device)
    print(format_result(result))
    if loader is not None:
        print(format_loader(loader, result["audio_seconds_per_second"]))
        result["loader"] = loader
    if args.json:
        print(json.dumps(result))
    return 0


def _device(spec: str):
    from audiossl.train import TrainingError, choose_device

    try:
        return choose_device(spec)
    except TrainingError as e:
        raise ConfigError(str(e)) from None


def _layers(args: argparse.Namespace) -> list[str]:
    """``--layer`` (default: context); refused with ``--baseline``, whose one layer is named after it."""
    if args.layers is None:
        return ["context"]
    if getattr(args, "baseline", None):
        raise ConfigError(f"--layer {','.join(args.layers)} is for --ckpt or --features; --baseline "
                          f"{args.baseline} has one layer, named {args.baseline}")
    return args.layers


def _counts(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; anything else is a usage error."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected counts of 0 or more, got {text!r}")
    return counts


def _names(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; ``"none"`` -> ``[]``."""
    return [] if text == "none" else [name for name in text.split(",") if name]


def cmd_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from audiossl.extract import extract, open_source, select_utterances

    device = _device(args.device)
    zerospeech = args.format == "zerospeech"
    if zerospeech and len(_layers(args)) != 1:
        raise ConfigError(f"--format zerospeech writes one representation: give one --layer, not "
                          f"{', '.join(_layers(args))}")
    model, layers, source = open_source(args.ckpt, args.baseline, _layers(args), device, args.sample_rate)
    if args.ckpt:
        _print_config(model.config)
    else:
        print(f"# hand-made features: {args.baseline}")
    utterances, problems = select_utterances(args.data, args.ids or (), args.speaker_level,
                                             progress=not args.no_progress)
    for p in problems:
        print(f"skipped {p.path}: {p.reason}")
    # The ZeroSpeech layout is written from a regular extraction (OUT/features), which a re-run resumes.
    out = Path(args.out) / "features" if zerospeech else Path(args.out)
    print(f"# extracting {', '.join(layers)} of {len(utterances)} utterances at {model.frame_rate:g} frames/s "
          f"on {device} into {out} ({'npy' if zerospeech else args.format})")
    sets = extract(model, utterances, out, layers, source, root=args.data if Path(args.data).is_dir() else None,
                   file_format="npy" if zerospeech else args.format, batch_size=args.batch_size,
                   chunk_seconds=args.chunk_seconds,
                   batch_seconds=args.batch_seconds,
                   dtype=args.dtype, device=device, num_workers=args.num_workers, progress=not args.no_progress)
    for features in sets.values():
        frames = sum(features.num_frames.values())
        print(f"{features.folder}: {len(features.num_frames)} utterances, {frames:,} frames of dim {features.dim}")
    done = min(len(features.num_frames) for features in sets.values())
    failed = len(utterances) - done
    print(f"extracted {done} of {len(utterances)} utterances"
          + (f"; {failed} failed to decode (named above) and were skipped" if failed else ""))
    if zerospeech:
        from audiossl.zerospeech import write_submission

        subset = args.zerospeech_subset or Path(args.data).resolve().name
        try:
            written = write_submission(next(iter(sets.values())), args.out, subset, args.zerospeech_file)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        print(f"ZeroSpeech layout: {len(written) - 1} files in {Path(args.out) / 'phonetic' / subset}, "
              f"{written[-1]} (edit its author, affiliation and train_set)")
    return 0


def _show(report: dict, table: str, out: str | None, write, curves: bool = False) -> int:
    """Print a probe's table and, with ``--out``, write its outputs and say where they are."""
    print(table)
    if out:
        write(report, table, out)
        print(f"metrics: {out}/metrics.json; table: {out}/report.txt" + (f"; curves: {out}/tb" if curves else ""))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.probes.report import (DEFAULT_SETTINGS, format_report, phone_probe, probe_features, speaker_probe,
                                        write_outputs)

    given = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed", "hidden")
             if getattr(args, k) is not None}
    try:
        settings = dataclasses.replace(DEFAULT_SETTINGS[args.task], **given)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (args.ckpt or args.baseline) and not args.data:
        raise ConfigError("--data (a corpus folder or manifest) is required with --ckpt and --baseline")
    # A hand-made feature probed as the main source is its own floor.
    baselines = args.baselines if args.baselines is not None else [] if args.baseline else ["mfcc", "logmel"]
    device = _device(args.device)
    print(f"# {args.task} probe on {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with probe_features(args.out, args.features, args.ckpt, args.baseline, _layers(args), args.data,
                        [s for s in (args.train_split, args.test_split) if s], device, args.num_workers,
                        not args.no_progress) as (features_dir, layers):
        common = {"layers": layers, "baselines": baselines, "data": args.data if args.features else None,
                  "train_split": args.train_split, "test_split": args.test_split, "settings": settings,
                  "device": device, "num_workers": args.num_workers, "progress": not args.no_progress}
        if args.task == "phone":
            report = phone_probe(features_dir, args.alignments, phones=args.phones, **common)
        else:
            report = speaker_probe(features_dir, window_frames=args.window_frames, pool=args.pool, **common)
    return _show(report, format_report(report), args.out, write_outputs, curves=True)


def _floors(args: argparse.Namespace) -> list[str]:
    """The floors probed beside the source: a hand-made feature probed as the source is its own floor."""
    if (args.ckpt or args.baseline) and not args.data:
        raise ConfigError("--data (a corpus folder or manifest) is required with --ckpt and --baseline")
    return args.baselines if args.baselines is not None else [] if args.baseline else ["mfcc", "logmel"]


def cmd_write_items(args: argparse.Namespace) -> int:
    from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split
    from audiossl.probes.abx_items import items_from_alignments, speaker_from_id, write_item_file
    from audiossl.probes.units import silence_class

    if not args.alignments or not args.phones:
        raise ConfigError("--write-items needs --alignments and --phones (the items' phone names)")
    if args.features or args.ckpt or args.baseline or args.item_file:
        raise ConfigError("--write-items only writes the item file: no --features, --ckpt, --baseline or --item-file")
    try:
        names = load_phone_inventory(args.phones)
        labels = load_alignments(args.alignments, len(names))
        ids = load_split(args.split) if args.split else list(labels)
    except ValueError as e:
        raise ProbeError(str(e)) from None
    unlabelled = [u for u in ids if u not in labels]
    if unlabelled:
        raise ProbeError(f"{len(unlabelled)} utterance(s) of {args.split} have no labels in {args.alignments}, "
                         f"e.g. {', '.join(unlabelled[:3])}")
    lines = items_from_alignments({u: labels[u] for u in ids}, names, {u: speaker_from_id(u) for u in ids},
                                  silence_class(args.phones))
    if not lines:
        raise ProbeError(f"no item in the {len(ids)} utterance(s): no non-silence phone has a neighbour on each side")
    write_item_file(args.write_items, lines)
    print(f"{args.write_items}: {len(lines):,} items from {len(ids)} utterances, "
          f"{len({line[6] for line in lines})} speakers")
    return 0


def cmd_probe_items(args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile

    from audiossl.probes.abx_groups import ItemABXSettings, format_item_report, item_file_probe
    from audiossl.probes.abx_items import ItemFileError, read_item_file
    from audiossl.probes.report import probe_features, write_table_and_metrics

    if args.alignments or args.split:
        raise ConfigError("--item-file names the items: no --alignments or --split")
    if args.distance != "angular" or args.context_frames:
        raise ConfigError("--item-file scores with the reference's angular distance and its frame cut: "
                          "no --distance cosine or --context-frames")
    contexts = {"all": ("within", "any"), "triphone": ("within",), "within": ("within",),
                "none": ("any",), "any": ("any",)}[args.context or "all"]
    try:
        settings = ItemABXSettings(context_modes=contexts, max_size_group=args.max_size_group,
                                   max_x_across=args.max_x_across, seed=3459 if args.seed is None else args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    baselines, device = _floors(args), _device(args.device)
    print(f"# abx on {args.item_file} with {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with contextlib.ExitStack() as stack:
        ids_file = None
        if args.ckpt or args.baseline:  # extract only the item file's utterances
            try:
                files = list(dict.fromkeys(read_item_file(args.item_file).file))
            except ItemFileError as e:
                raise ProbeError(str(e)) from None
            ids_file = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".txt"))
            ids_file.write("".join(f + "\n" for f in files))
            ids_file.flush()
        features_dir, layers = stack.enter_context(probe_features(
            args.out, args.features, args.ckpt, args.baseline, _layers(args), args.data,
            [ids_file.name] if ids_file else [], device, args.num_workers, not args.no_progress))
        report = item_file_probe(features_dir, args.item_file, layers, baselines,
                                 data=args.data if args.features else None, settings=settings, device=device,
                                 num_workers=args.num_workers, progress=not args.no_progress)
    return _show(report, format_item_report(report), args.out, write_table_and_metrics)


def cmd_probe_abx(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.probes.abx import ABXSettings, abx_probe, format_abx_report
    from audiossl.probes.report import probe_features, write_table_and_metrics

    if args.write_items:
        return cmd_write_items(args)
    if not (args.features or args.ckpt or args.baseline):
        raise ConfigError("probe abx needs one of --features, --ckpt and --baseline (or --write-items)")
    if args.item_file:
        return cmd_probe_items(args)
    if not args.alignments:
        raise ConfigError("probe abx needs --alignments (items cut from frame labels) or --item-file")
    if args.context in ("within", "any", "all"):
        raise ConfigError(f"--context {args.context} is for --item-file; with --alignments: triphone or none")
    try:
        settings = ABXSettings(args.context or "triphone", args.distance, args.max_triples_per_item,
                               args.context_frames, 1 if args.seed is None else args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    baselines, device = _floors(args), _device(args.device)
    print(f"# abx on {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with probe_features(args.out, args.features, args.ckpt, args.baseline, _layers(args), args.data,
                        [args.split] if args.split else [], device, args.num_workers,
                        not args.no_progress) as (features_dir, layers):
        report = abx_probe(features_dir, args.alignments, layers, baselines,
                           data=args.data if args.features else None, split=args.split, phones=args.phones,
                           settings=settings, device=device, num_workers=args.num_workers,
                           progress=not args.no_progress)
    return _show(report, format_abx_report(report), args.out, write_table_and_metrics)


def cmd_probe_ctc(args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile
    from pathlib import Path

    from audiossl.probes.ctc import CTCSettings, ctc_phone_probe, ctc_subword_probe, format_ctc_report
    from audiossl.probes.report import probe_features, write_outputs

    try:
        settings = CTCSettings(args.head, args.hidden, args.lstm_layers, args.epochs, args.batch_size, args.lr,
                               args.weight_decay, args.patience, args.heldout_fraction, args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    baselines, device = _floors(args), _device(args.device)
    print(f"# {args.task} probe on {args.features or args.ckpt or 'baseline ' + args.baseline}: floors "
          f"{', '.join(baselines) or 'none'}; {json.dumps(dataclasses.asdict(settings))}")
    with contextlib.ExitStack() as stack:
        features_dir, layers = stack.enter_context(probe_features(
            args.out, args.features, args.ckpt, args.baseline, _layers(args), args.data,
            [s for s in (args.train_split, args.test_split) if s], device, args.num_workers, not args.no_progress))
        common = {"baselines": baselines, "data": args.data if args.features else None,
                  "train_split": args.train_split, "test_split": args.test_split, "settings": settings,
                  "device": device, "num_workers": args.num_workers, "progress": not args.no_progress}
        if args.task == "ctc-phone":
            report = ctc_phone_probe(features_dir, args.alignments, layers, phones=args.phones,
                                     keep_silence=args.keep_silence, **common)
        else:
            # The units live beside the results and are reused by the next run; without --out, for this run only.
            units = args.units or Path(args.out or stack.enter_context(tempfile.TemporaryDirectory())) / "units.model"
            report = ctc_subword_probe(features_dir, units, layers, vocab_size=args.vocab_size,
                                       sp_type=args.sp_type, transcripts=args.transcripts or (), **common)
    return _show(report, format_ctc_report(report), args.out, write_outputs, curves=True)


def cmd_units(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.discrete import FitSettings, UnitModel, assign_units, fit_units
    from audiossl.kmeans import KMeansSettings

    device, progress = _device(args.device), not args.no_progress
    if args.action == "assign":
        model = UnitModel(args.units)
        print(f"# assigning the {model.k} units of {args.units} to {args.features}/{args.layer or model.layer} "
              f"into {args.out}")
        done = assign_units(model, args.features, args.out, args.layer, args.split, args.onehot, device, progress)
        print(f"{args.out}: {done['utterances']} utterances ({done['reused']} kept from an earlier run, "
              f"{done['written']} written), {done['frames']:,} frames, {done['units_used']} of {model.k} units used"
              + (f"; {done['missing']} listed utterance(s) have no features" if done["missing"] else ""))
        return 0
    try:
        settings = FitSettings(KMeansSettings(args.k, args.batch_size, args.max_epochs, args.tol, args.init_size,
                                              args.seed), args.max_frames,
                               "none" if args.no_standardize else args.standardize)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"# k-means on {args.features}/{args.layer} into {args.out}: {json.dumps(dataclasses.asdict(settings))}")
    model, fitted = fit_units(args.features, args.out, args.layer, settings, args.split, device, progress)
    fit = model.record["fit"]
    print(f"{args.out}: " + ("fitted" if fitted else "fitted before with the same settings, kept")
          + f": k={model.k} on {fit['frames_used']:,} of {fit['frames_available']:,} frames of {fit['utterances']} "
          f"utterances, {fit['epochs']} epoch(s) ({'converged' if fit['converged'] else 'epoch limit'}), mean "
          f"squared distance {fit['inertia']:.4g}, {fit['empty_clusters']} empty cluster(s)")
    return 0


def cmd_probe_units(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.probes.abx import ABXSettings
    from audiossl.probes.discrete import format_units_report, units_probe
    from audiossl.probes.report import write_table_and_metrics

    try:
        abx = ABXSettings(args.context, "angular", args.max_triples_per_item, 0, args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    baselines = args.baselines if args.baselines is not None else ["mfcc", "logmel"]
    print(f"# units probe of {args.units} on {args.features}: floors {', '.join(baselines) or 'none'}; "
          f"abx {json.dumps(dataclasses.asdict(abx))}")
    report = units_probe(args.units, args.features, args.alignments, split=args.split, phones=args.phones,
                         baselines=baselines, data=args.data, abx=abx, out=args.out, device=_device(args.device),
                         num_workers=args.num_workers, progress=not args.no_progress)
    return _show(report, format_units_report(report), args.out, write_table_and_metrics)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from audiossl.report import make_report

    out = Path(args.out) if args.out else Path(args.exp_dir) / "report"
    outcome = make_report(args.exp_dir, out, args.utterance, args.data, args.labels, args.layer,
                          _device(args.device), args.max_utterances)
    for name, status in outcome.items():
        print(f"{out / name}" if status == "written" else f"{name}: not available ({status})")
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from audiossl.checkpoint import atomic_save
    from audiossl.config import Config
    from audiossl.convert import from_cpc_audio, to_cpc_audio, to_cpc_audio_release

    if args.from_format:
        ckpt, notes = from_cpc_audio(args.source)
        cfg = Config.from_dict(ckpt["config"])
        _print_config(cfg)
        atomic_save(ckpt, args.out)
        if args.config_out:
            from audiossl.atomic import atomic_write

            text = yaml.safe_dump(cfg.flat(), sort_keys=False)
            atomic_write(args.config_out, lambda f: f.write(text.encode()), what="config")
        read = ckpt["converted_from"]
        source = f"epoch {read['epoch']} of {read['path']}" if read["epoch"] is not None else read["path"]
    elif args.config_out:
        raise ConfigError("--config-out goes with --from: it writes the converted run's audiossl config")
    else:
        notes = (to_cpc_audio if args.to_format == "cpc_audio" else to_cpc_audio_release)(args.source, args.out)
        source = args.source
    for note in notes:
        print(f"note: {note}")
    print(f"{args.out}: converted from {source}"
          + (f"; its config: {args.config_out}" if args.from_format and args.config_out else ""))
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="flat YAML config file (recipes/conf/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=1e-3")


def _probe_options(source_required: bool) -> argparse.ArgumentParser:
    """The options every probe shares: the source (required unless a task does without), floors, device, output."""
    shared = argparse.ArgumentParser(add_help=False)
    source = shared.add_mutually_exclusive_group(required=source_required)
    source.add_argument("--features", help="an audiossl extract output folder")
    source.add_argument("--ckpt", "--checkpoint", dest="ckpt",
                        help="a checkpoint; its features are extracted from --data first (cached in OUT/features)")
    source.add_argument("--baseline", choices=sorted(BASELINES),
                        help="probe a hand-made feature of --data (cached in OUT/features)")
    shared.add_argument("--data", help="corpus folder or manifest: required with --ckpt and --baseline; with "
                        "--features, where the floors' audio is read (default: the audio the features came from)")
    shared.add_argument("--layer", "--layers", dest="layers", type=_names, default=None,
                        help="with --features or --ckpt, comma-separated layers to probe (default: context)")
    shared.add_argument("--baselines", type=_names, default=None,
                        help="hand-made floors probed beside the main source (default: mfcc,logmel; with "
                        "--baseline: none; 'none' for none)")
    shared.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    shared.add_argument("--num-workers", type=int, default=2, help="audio decoding processes for extraction")
    shared.add_argument("--out", help="output folder: metrics.json, report.txt, tb/ (TensorBoard curves) and, "
                        "with --ckpt or --baseline, the extracted features")
    shared.add_argument("--no-progress", action="store_true", help="no progress bars")
    return shared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiossl", description="Self-supervised speech representation learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="scan a corpus folder into a manifest TSV")
    p.add_argument("--data", required=True, help="corpus folder (LibriSpeech layout or any audio tree)")
    p.add_argument("--out", required=True, help="manifest TSV to write")
    p.add_argument("--speaker-level", type=int, default=-1, help="folder level naming the speaker (non-LibriSpeech)")
    p.add_argument("--strict", action="store_true", help="fail if any file is unusable, instead of skipping it")
    p.add_argument("--header-only", action="store_true",
                   help="read headers only: faster, but truncated files and NaN samples go unnoticed")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="pretrain a model; re-running resumes from --exp-dir")
    _add_config_args(p)
    p.add_argument("--data", required=True, help="corpus folder or manifest TSV")
    p.add_argument("--exp-dir", required=True, help="experiment folder (checkpoint, logs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true",
                   help="fail before training if any file is unusable or shorter than the window")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="training-step throughput on random audio")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model and objective (compile=true)")
    p.add_argument("--data", help="also time the training data loader on this corpus folder or manifest TSV")
    p.add_argument("--workers", type=_counts, default=[1, 2, 4],
                   help="with --data: comma-separated DataLoader worker counts (default 1,2,4)")
    p.add_argument("--loader-seconds", type=float, default=5.0,
                   help="with --data: seconds of batches counted per worker count")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("extract", help="per-utterance features to numpy (OUT/<layer>/<relative path>.npy|.npz); "
                       "re-running resumes")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", "--checkpoint", dest="ckpt", help="a trained model's checkpoint.pt")
    source.add_argument("--baseline", choices=sorted(BASELINES), help="hand-made features instead of a model")
    p.add_argument("--data", required=True, help="corpus folder or manifest TSV; the output tree mirrors its paths")
    p.add_argument("--out", required=True, help="output folder, one sub-folder per layer")
    p.add_argument("--layer", "--layers", dest="layers", type=_names, default=None,
                   help="with --ckpt, comma-separated: encoder, context (the last layer), context_1, ... "
                   "(default: context)")
    p.add_argument("--format", choices=["npy", "npz", "zerospeech"], default="npy",
                   help="one .npy per utterance, or a compressed .npz holding the array as 'features', or "
                   "zerospeech: the ZeroSpeech 2021 submission layout (OUT/phonetic/<subset>/<id>.npy|.txt and "
                   "OUT/meta.yaml, written from an extraction into OUT/features)")
    p.add_argument("--zerospeech-subset", help="--format zerospeech: the folder under OUT/phonetic (default: the "
                   "--data folder's name, e.g. dev-clean)")
    p.add_argument("--zerospeech-file", choices=["npy", "txt"], default="npy",
                   help="--format zerospeech: .npy (zrc-abx2's default) or .txt (what zerospeech2021-validate "
                   "accepts)")
    p.add_argument("--ids", action="append", metavar="FILE",
                   help="only the utterances listed (one id per line; repeatable, e.g. train and test splits)")
    p.add_argument("--batch-size", type=int, default=8, help="most utterances per forward pass")
    p.add_argument("--batch-seconds", type=float, default=160.0,
                   help="most padded audio per forward pass (utterances x the longest); longer files go alone")
    p.add_argument("--chunk-seconds", type=float, default=0.0,
                   help="encode long files this many seconds at a time, same result (0: whole files)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="arrays on disk")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio rate for --baseline features")
    p.add_argument("--speaker-level", type=int, default=-1, help="folder level naming the speaker (non-LibriSpeech)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, default=2, help="audio decoding processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("probe", help="linear phone or speaker, ABX, CTC and discrete-unit probes on frozen "
                       "features, beside MFCC/log-mel")
    tasks = p.add_subparsers(dest="task", required=True)
    shared = _probe_options(source_required=True)
    # The linear probes' training; abx and the CTC probes have their own options.
    fit = argparse.ArgumentParser(add_help=False)
    fit.add_argument("--train-split", help="training utterance ids (CPC's train_split.txt)")
    fit.add_argument("--test-split", help="test utterance ids (CPC's test_split.txt); without both splits "
                     "every fifth utterance of each speaker is held out")
    fit.add_argument("--epochs", type=int, help="most passes over the training examples (phone 40, speaker 100)")
    fit.add_argument("--patience", type=int, help="stop after this many epochs without a better held-out "
                     "accuracy (phone 10, speaker 20; 0: never)")
    fit.add_argument("--batch-size", type=int, help="examples per step (phone 1024, speaker 64)")
    fit.add_argument("--lr", type=float, help="AdamW peak learning rate (1e-2)")
    fit.add_argument("--weight-decay", type=float, help="AdamW weight decay (0)")
    fit.add_argument("--seed", type=int, help="held-out part and example order (1)")
    fit.add_argument("--hidden", type=int, help="units of one ReLU hidden layer (0: a linear probe, the default)")
    t = tasks.add_parser("phone", parents=[shared, fit], help="phone class per 10 ms frame")
    t.add_argument("--alignments", required=True, help="converted_aligned_phones.txt")
    t.add_argument("--phones", help="phone inventory (phones.txt); fixes the number of classes")
    t = tasks.add_parser("speaker", parents=[shared, fit], help="speaker per utterance (mean-pooled) or per window")
    t.add_argument("--window-frames", type=int, default=0,
                   help="frames per example (default 0: whole utterances; CPC_audio uses 128)")
    t.add_argument("--pool", choices=["mean", "last"], default="mean", help="pool a window by its mean or last frame")
    p.set_defaults(func=cmd_probe)
    t = tasks.add_parser("abx", parents=[_probe_options(source_required=False)],
                         help="ABX phone discriminability within and across speakers, on items cut from frame "
                         "alignments or on a Libri-light/ZeroSpeech item file")
    t.add_argument("--alignments", help="converted_aligned_phones.txt (items are cut from it)")
    t.add_argument("--item-file", help="a Libri-light/ZeroSpeech .item file: score its items as zrc-abx2 does "
                   "(instead of --alignments)")
    t.add_argument("--write-items", metavar="OUT.item", help="write --alignments' items (of --split) as an item "
                   "file with --phones' names, and stop")
    t.add_argument("--phones", help="phone inventory (phones.txt); names the silence class SIL (default: class 0)")
    t.add_argument("--split", help="utterance ids to draw items from (CPC's test_split.txt; default: all)")
    t.add_argument("--context", choices=["triphone", "none", "within", "any", "all"], default=None,
                   help="triphone (= within): A, B, X share both neighbouring phones (ZeroSpeech); none (= any): "
                   "any context; all: both (--item-file only). Default: triphone, all with --item-file")
    t.add_argument("--distance", choices=["angular", "cosine"], default="angular",
                   help="frame distance: arccos(cos)/pi (ZeroSpeech's and Libri-light's 'cosine') or 1 - cos")
    t.add_argument("--max-triples-per-item", type=int, default=20,
                   help="(A, B) pairs drawn per X item and condition (0: all)")
    t.add_argument("--context-frames", type=int, default=0, help="neighbour frames added to each side of an item")
    t.add_argument("--max-size-group", type=int, default=10,
                   help="--item-file: items drawn per (context, speaker, phone) group (zrc-abx2's default 10)")
    t.add_argument("--max-x-across", type=int, default=5,
                   help="--item-file: X speakers drawn per A group across speakers (zrc-abx2's default 5)")
    t.add_argument("--seed", type=int, default=None,
                   help="the sampling (default 1; with --item-file 3459, zrc-abx2's)")
    t.set_defaults(func=cmd_probe_abx)
    from audiossl.probes.ctc import DEFAULT_LR, CTCSettings

    ctc_defaults = CTCSettings()  # the CTC options' defaults are the settings' own
    ctc = argparse.ArgumentParser(add_help=False)
    ctc.add_argument("--train-split", help="training utterance ids (CPC's train_split.txt)")
    ctc.add_argument("--test-split", help="test utterance ids (CPC's test_split.txt); without both splits "
                     "every fifth utterance of each speaker is held out")
    ctc.add_argument("--head", choices=["linear", "bilstm"], default=ctc_defaults.head,
                     help="CTC head on the frozen features")
    ctc.add_argument("--hidden", type=int, default=ctc_defaults.hidden, help="BiLSTM units per direction")
    ctc.add_argument("--lstm-layers", type=int, default=ctc_defaults.lstm_layers, help="BiLSTM layers")
    ctc.add_argument("--epochs", type=int, default=ctc_defaults.epochs, help="most passes over the training utterances")
    ctc.add_argument("--patience", type=int, default=ctc_defaults.patience,
                     help="stop after this many epochs without a lower held-out CTC loss (0: never)")
    ctc.add_argument("--heldout-fraction", type=float, default=ctc_defaults.heldout_fraction,
                     help="of the training utterances, held out to choose the epoch")
    ctc.add_argument("--batch-size", type=int, default=ctc_defaults.batch_size, help="utterances per step")
    ctc.add_argument("--lr", type=float, help="AdamW peak learning rate (default: "
                     + ", ".join(f"{head} {lr:g}" for head, lr in DEFAULT_LR.items()) + ")")
    ctc.add_argument("--weight-decay", type=float, default=ctc_defaults.weight_decay, help="AdamW weight decay")
    ctc.add_argument("--seed", type=int, default=ctc_defaults.seed,
                     help="held-out part, initialization and utterance order")
    t = tasks.add_parser("ctc-phone", parents=[shared, ctc], help="CTC phone recognition; phone error rate")
    t.add_argument("--alignments", required=True, help="converted_aligned_phones.txt (collapsed to phone sequences)")
    t.add_argument("--phones", help="phone inventory (phones.txt); number of classes and the silence class SIL")
    t.add_argument("--keep-silence", action="store_true", help="keep silence as a unit instead of dropping it")
    t.set_defaults(func=cmd_probe_ctc)
    t = tasks.add_parser("ctc-subword", parents=[shared, ctc],
                         help="CTC recognition of sentencepiece pieces; character and word error rates")
    t.add_argument("--transcripts", action="append", metavar="PATH",
                   help="transcript file or folder of *.trans.txt (repeatable; default: those beside the audio)")
    t.add_argument("--vocab-size", type=int, default=100, help="most sentencepiece pieces")
    t.add_argument("--sp-type", choices=["unigram", "bpe"], default="unigram", help="sentencepiece model type")
    t.add_argument("--units", help="sentencepiece model file, trained if absent (default: OUT/units.model)")
    t.set_defaults(func=cmd_probe_ctc)
    t = tasks.add_parser("units", help="discrete units against phone labels: purity, PNMI and ABX of one-hot units, "
                         "beside k-means on the floors")
    t.add_argument("--units", required=True, help="an audiossl units fit folder")
    t.add_argument("--features", required=True, help="the audiossl extract folder holding the units' layer")
    t.add_argument("--alignments", required=True, help="converted_aligned_phones.txt")
    t.add_argument("--phones", help="phone inventory (phones.txt): number of classes and the silence class SIL")
    t.add_argument("--split", help="utterance ids to score (CPC's test_split.txt; default: all)")
    t.add_argument("--data", help="corpus folder or manifest of the floors' audio (default: the features' audio)")
    t.add_argument("--baselines", type=_names, default=None,
                   help="hand-made floors clustered with the same settings (default: mfcc,logmel; 'none' for none)")
    t.add_argument("--context", choices=["triphone", "none"], default="triphone", help="ABX context rule")
    t.add_argument("--max-triples-per-item", type=int, default=20, help="ABX (A, B) pairs per X item (0: all)")
    t.add_argument("--seed", type=int, default=1, help="ABX triple sampling")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--num-workers", type=int, default=2, help="audio decoding processes for the floors")
    t.add_argument("--out", help="output folder: metrics.json, report.txt and the floors' k-means (kmeans_<floor>)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_probe_units)

    from audiossl.discrete import ONEHOT_FORMATS, FitSettings

    fit_defaults = FitSettings()
    p = sub.add_parser("units", help="discrete units: k-means on extracted features (fit), unit sequences (assign)")
    actions = p.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--features", required=True, help="an audiossl extract output folder")
    common.add_argument("--out", required=True, help="output folder")
    common.add_argument("--split", help="only the utterances listed (one id per line; default: all)")
    common.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    t = actions.add_parser("fit", parents=[common], help="k-means (k-means++ start, mini-batches) on a seeded "
                           "sample of frames; a folder fitted with the same settings is kept")
    t.add_argument("--layer", default="context", help="layer folder of --features to cluster")
    t.add_argument("--k", type=int, default=fit_defaults.kmeans.k, help="units (clusters)")
    t.add_argument("--max-frames", type=int, default=fit_defaults.max_frames,
                   help="frames drawn to fit on, uniformly over every frame of the utterances (0: all)")
    t.add_argument("--standardize", choices=STANDARDIZE, default=fit_defaults.standardize,
                   help="scale every dimension to zero mean and unit variance before clustering, with each "
                   "utterance's own statistics (utterance, the default) or the fitting sample's (global, kept in "
                   "the model)")
    t.add_argument("--no-standardize", action="store_true", help="cluster the raw features (--standardize none)")
    t.add_argument("--batch-size", type=int, default=fit_defaults.kmeans.batch_size, help="frames per mini-batch")
    t.add_argument("--max-epochs", type=int, default=fit_defaults.kmeans.max_epochs, help="most passes over the sample")
    t.add_argument("--tol", type=float, default=fit_defaults.kmeans.tol,
                   help="stop when an epoch lowers the mean squared distance by less than this fraction")
    t.add_argument("--init-size", type=int, default=fit_defaults.kmeans.init_size,
                   help="frames the k-means++ start sees (0: 3 x --batch-size)")
    t.add_argument("--seed", type=int, default=fit_defaults.kmeans.seed, help="frame sample and k-means")
    t.set_defaults(func=cmd_units)
    t = actions.add_parser("assign", parents=[common], help="unit sequences (ZeroSpeech 2021 text) and one-hot "
                           "features of every utterance; re-running resumes")
    t.add_argument("--units", required=True, help="an audiossl units fit folder")
    t.add_argument("--layer", help="layer folder of --features (default: the one the units were fitted on)")
    t.add_argument("--onehot", choices=ONEHOT_FORMATS, default="npy",
                   help="one-hot (frames, k) arrays under OUT/onehot, or none")
    t.set_defaults(func=cmd_units)

    p = sub.add_parser("convert", help="CPC_audio checkpoints to audiossl's and back")
    p.add_argument("source", metavar="SOURCE", help="with --from cpc_audio: a CPC_audio training folder (its highest "
                   "epoch), checkpoint_<epoch>.pt or release file; with --to: an audiossl checkpoint")
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_format", choices=["cpc_audio"], help="convert into audiossl's format")
    direction.add_argument("--to", dest="to_format", choices=["cpc_audio", "cpc_audio-release"],
                           help="cpc_audio: a training folder CPC_audio resumes from; cpc_audio-release: a "
                           "{config, weights} file, as its published checkpoints (s3prl's cpc_local reads it)")
    p.add_argument("--out", required=True, help="the checkpoint, folder or release file to write")
    p.add_argument("--config-out", help="with --from: also write the run's flat YAML config, for train --config")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("report", help="figures and a markdown page (report.md) for an experiment folder")
    p.add_argument("exp_dir", metavar="EXP_DIR", help="a recipe run folder or an audiossl train --exp-dir")
    p.add_argument("--out", help="output folder (default: EXP_DIR/report)")
    p.add_argument("--utterance", help="utterance id to draw (default: the first of the test split, else the corpus)")
    p.add_argument("--data", help="corpus folder or manifest TSV (default: the training manifest)")
    p.add_argument("--labels", help="folder with converted_aligned_phones.txt, phones.txt and the split lists "
                   "(default: looked for in the corpus folder and above it)")
    p.add_argument("--layer", default="context", help="layer whose features are shown (default: context)")
    p.add_argument("--max-utterances", type=int, default=300,
                   help="utterances for the confusion classifier and the projection (default: 300)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N, where features are computed")
    p.set_defaults(func=cmd_report)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking ``key=value`` overrides wherever they stand among the options."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [item for item in rest if "=" in item and not item.startswith("-")]
    unknown = [item for item in rest if item not in overrides]
    if overrides and not hasattr(args, "overrides"):
        unknown = rest
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = args.overrides + overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if argv is None:  # run as a program, not called from Python: the process is ours to replace
        reexec_under_tcmalloc(args.command, sys.argv[1:])
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"audiossl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DiskFullError as e:
        print(f"audiossl {args.command}: error: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"audiossl {args.command}: error: {e.strerror.lower()}{where}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"audiossl {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


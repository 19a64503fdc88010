"""``audiossl extract``: per-utterance features of a checkpoint or a hand-made baseline, to numpy files."""

from __future__ import annotations

import argparse

from audiossl.cli.options import (
    count,
    device_from,
    layers_from,
    name_list,
    non_negative_float,
    positive_float,
    positive_int,
    print_config,
)
from audiossl.config import ConfigError
from audiossl.models.baselines import BASELINES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="per-utterance features to numpy (OUT/<layer>/<relative path>.npy|.npz); "
                       "re-running resumes")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", "--checkpoint", dest="ckpt", help="a trained model's checkpoint.pt, a Hugging Face "
                        "model folder (config.json: wav2vec2, hubert, wavlm, data2vec-audio) or a fairseq wav2vec 2.0 "
                        "/ HuBERT .pt")
    source.add_argument("--baseline", choices=sorted(BASELINES), help="hand-made features instead of a model")
    p.add_argument("--data", required=True, help="corpus folder or manifest TSV; the output tree mirrors its paths")
    p.add_argument("--out", required=True, help="output folder, one sub-folder per layer")
    p.add_argument("--layer", "--layers", dest="layers", type=name_list, default=None,
                   help="with --ckpt, comma-separated: encoder, context (the model's output), context_1, ...; "
                   "a Hugging Face or fairseq model's encoder, layer_0 .. layer_N (default: context)")
    p.add_argument("--format", choices=["npy", "npz", "zerospeech"], default="npy",
                   help="one .npy per utterance, or a compressed .npz holding the array as 'features', or "
                   "zerospeech: the ZeroSpeech 2021 submission layout (OUT/phonetic/<subset>/<id>.npy|.txt and "
                   "OUT/meta.yaml, written from an extraction into OUT/features)")
    p.add_argument("--zerospeech-subset", help="--format zerospeech: the folder under OUT/phonetic (default: the "
                   "--data folder's name, e.g. dev-clean; required with a manifest)")
    p.add_argument("--zerospeech-file", choices=["npy", "txt"], default="npy",
                   help="--format zerospeech: .npy (zrc-abx2's default) or .txt (what zerospeech2021-validate "
                   "accepts)")
    p.add_argument("--ids", action="append", metavar="FILE",
                   help="only the utterances listed (one id per line; repeatable, e.g. train and test splits)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="most utterances per forward pass")
    p.add_argument("--batch-seconds", type=positive_float, default=160.0,
                   help="most padded audio per forward pass (utterances x the longest); longer files go alone")
    p.add_argument("--chunk-seconds", type=non_negative_float, default=0.0,
                   help="encode long files this many seconds at a time, same result (0: whole files; a Hugging Face "
                   "or fairseq Transformer's differs, see docs/interop.md)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="arrays on disk")
    p.add_argument("--sample-rate", type=positive_int, default=16000, help="audio rate for --baseline features")
    p.add_argument("--speaker-level", type=int, default=-1, help="folder level naming the speaker (non-LibriSpeech)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=count, default=2, help="audio decoding processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)


def cmd_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from audiossl.extract import ExtractOptions, extract, open_source, select_utterances

    device = device_from(args.device)
    zerospeech = args.format == "zerospeech"
    subset = check_zerospeech(args) if zerospeech else None
    model, layers, source = open_source(args.ckpt, args.baseline, layers_from(args), device, args.sample_rate)
    if args.ckpt and hasattr(model, "description"):  # another library's model
        print(f"# {model.description}")
        if args.chunk_seconds and not model.chunks_exactly:
            print(f"# note: chunks of {args.chunk_seconds:g} s see {model.chunk_margin / model.sample_rate:g} s of "
                  "audio on each side; a bidirectional Transformer's chunked features differ from whole-file ones "
                  "(docs/interop.md)")
    elif args.ckpt:
        print_config(model.config)
    else:
        print(f"# hand-made features: {args.baseline}")
    utterances, problems = select_utterances(args.data, args.ids or (), args.speaker_level,
                                             progress=not args.no_progress)
    for p in problems:
        print(f"skipped {p.path}: {p.reason}")
    if zerospeech:  # before any work: a refused submission must leave nothing half-written
        from audiossl.interop.zerospeech import check_ids

        try:
            check_ids(u.id for u in utterances)
        except ValueError as e:
            raise ConfigError(f"--format zerospeech with {args.data}: {e}") from None
    # The ZeroSpeech layout is written from a regular extraction (OUT/features), which a re-run resumes.
    out = Path(args.out) / "features" if zerospeech else Path(args.out)
    print(f"# extracting {', '.join(layers)} of {len(utterances)} utterances at {model.frame_rate:g} frames/s "
          f"on {device} into {out} ({'npy' if zerospeech else args.format})")
    options = ExtractOptions(root=args.data if Path(args.data).is_dir() else None,
                             file_format="npy" if zerospeech else args.format, batch_size=args.batch_size,
                             batch_seconds=args.batch_seconds, chunk_seconds=args.chunk_seconds, dtype=args.dtype,
                             device=device, num_workers=args.num_workers, progress=not args.no_progress)
    sets = extract(model, utterances, out, layers, source, options)
    for features in sets.values():
        frames = sum(features.num_frames.values())
        print(f"{features.folder}: {len(features.num_frames)} utterances, {frames:,} frames of dim {features.dim}")
    done = min(len(features.num_frames) for features in sets.values())
    failed = len(utterances) - done
    print(f"extracted {done} of {len(utterances)} utterances"
          + (f"; {failed} failed to decode (named above) and were skipped" if failed else ""))
    if zerospeech:
        from audiossl.interop.zerospeech import write_submission

        try:
            written = write_submission(next(iter(sets.values())), args.out, subset, args.zerospeech_file)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        print(f"ZeroSpeech layout: {len(written) - 1} files in {Path(args.out) / 'phonetic' / subset}, "
              f"{written[-1]} (edit its author, affiliation and train_set)")
    return 0


def check_zerospeech(args: argparse.Namespace) -> str:
    """What ``--format zerospeech`` needs, checked before any work: one layer, and the folder under
    ``OUT/phonetic``, which it returns: ``--zerospeech-subset``, else the ``--data`` folder's name (a manifest's
    file name is no LibriSpeech subset: refused), a plain folder name."""
    from pathlib import Path

    from audiossl.interop.zerospeech import check_subset

    if len(layers_from(args)) != 1:
        raise ConfigError(f"--format zerospeech writes one representation: give one --layer, not "
                          f"{', '.join(layers_from(args))}")
    if args.zerospeech_subset is None and Path(args.data).is_file():
        raise ConfigError(f"--format zerospeech with a manifest ({args.data}): name the subset with "
                          "--zerospeech-subset (dev-clean, dev-other, test-clean or test-other)")
    subset = args.zerospeech_subset or Path(args.data).resolve().name
    try:
        check_subset(subset)
    except ValueError as e:
        raise ConfigError(f"--zerospeech-subset: {e}") from None
    return subset

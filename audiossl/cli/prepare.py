"""``audiossl prepare``: scan a corpus folder into a manifest TSV."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="scan a corpus folder into a manifest TSV")
    p.add_argument("--data", required=True, help="corpus folder (LibriSpeech layout or any audio tree)")
    p.add_argument("--out", required=True, help="manifest TSV to write")
    p.add_argument("--speaker-level", type=int, default=-1, help="folder level naming the speaker (non-LibriSpeech)")
    p.add_argument("--strict", action="store_true", help="fail if any file is unusable, instead of skipping it")
    p.add_argument("--header-only", action="store_true",
                   help="read headers only: faster, but truncated files and NaN samples go unnoticed")
    p.set_defaults(func=cmd_prepare)


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

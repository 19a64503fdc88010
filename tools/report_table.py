#!/usr/bin/env python3
"""Print a markdown report of a recipe run: probe accuracies beside the floors.

    python tools/report_table.py exp/mini/cpc [--title TEXT]

Reads ``probe_<kind>_<source>/metrics.json`` below the run folder (kind:
phone | speaker; source: model | mfcc | logmel) and the pretraining config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SOURCES = {"model": "pretrained model", "mfcc": "MFCC (floor)", "logmel": "log-mel (floor)"}
# van den Oord et al. 2018, Table 1: LibriSpeech 100 h, linear probes.
PUBLISHED = [("CPC (paper)", 64.6, 97.4), ("MFCC (paper)", 39.7, 17.6), ("supervised (paper)", 74.6, 98.5)]


def cell(metrics: dict | None) -> str:
    if metrics is None:
        return "-"
    text = f"{100 * metrics['accuracy']:.1f}"
    if "chance" in metrics:
        text += f" (chance {100 * metrics['chance']:.1f})"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the recipe's run folder, e.g. exp/mini/cpc")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    results: dict[tuple[str, str], dict] = {}
    for path in sorted(args.run.glob("probe_*_*/metrics.json")):
        _, kind, source = path.parent.name.split("_", 2)
        try:
            results[(kind, source)] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path}: unreadable metrics ({e})", file=sys.stderr)
            return 1
    if not results:
        print(f"{args.run}: no probe results (probe_*_*/metrics.json) found", file=sys.stderr)
        return 1
    lines = [f"# {args.title or args.run.name}", ""]
    config = args.run / "pretrain" / "config.yaml"
    if config.is_file():
        lines += [f"Pretraining config: `{config}`", ""]
    lines += ["| features | phone accuracy % | speaker accuracy % |", "|---|---|---|"]
    for source, name in SOURCES.items():
        if any(s == source for _, s in results):
            lines.append(f"| {name} | {cell(results.get(('phone', source)))} | {cell(results.get(('speaker', source)))} |")
    lines += ["", "For scale, LibriSpeech 100 h figures from the CPC paper (Table 1):", "",
              "| features | phone accuracy % | speaker accuracy % |", "|---|---|---|"]
    lines += [f"| {name} | {phone} | {speaker} |" for name, phone, speaker in PUBLISHED]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the markdown table of ``tools/units_table.sh``: one row per feature set and k, from the probes' metrics.

    python tools/units_table.py OUT

Reads every ``OUT/<name>/k<k>/probe/metrics.json`` (``audiossl probe units`` output).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def main(out: str) -> int:
    rows = []
    for path in sorted(Path(out).glob("*/k*/probe/metrics.json")):
        report = json.loads(path.read_text())
        (row,) = [r for r in report["results"] if r["role"] == "model"]
        rows.append((path.parts[-4], report["k"], report["layer"], row))
    if not rows:
        print(f"no {out}/<name>/k<k>/probe/metrics.json yet", file=sys.stderr)
        return 1
    floors = ("mfcc", "logmel")
    rows.sort(key=lambda r: (r[1], r[0] in floors, floors.index(r[0]) if r[0] in floors else 0, r[0]))
    print("| features | layer | k | units used | phone purity | cluster purity | PNMI | ABX within | ABX across |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, k, layer, row in rows:
        print(f"| {name} | {layer} | {k} | {row['units_used']} | {pct(row['phone_purity'])} | "
              f"{pct(row['cluster_purity'])} | {row['pnmi']:.3f} | {pct(row['within'])} | {pct(row['across'])} |")
    first = json.loads(Path(sorted(Path(out).glob("*/k*/probe/metrics.json"))[0]).read_text())
    print(f"\n{first['utterances']} test utterances, {first['speakers']} speakers, "
          f"{first['results'][0]['frames']:,} labelled frames")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))

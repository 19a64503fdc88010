"""Score one features folder on one item file with audiossl and with zrc-abx2, side by side.

The reference is ``zrc-abx2`` from the ``zerospeech-libriabx2`` package
(``pip install Cython && pip install zerospeech-libriabx2``), run in this
process on the same ``.npy`` files. It reads files in the order its directory
walk finds them, and that order decides which items its seeded sampling
draws; audiossl takes them in order of first appearance in the item file. So
the reference runs twice: once given audiossl's file order (the two must then
agree to rounding), and once as its own command line would run it (walk
order: the difference is the sampling's own spread).

    python tools/abx_crosscheck.py --features exp/features/context --item-file demo.item

``--features`` is an ``audiossl extract`` layer folder (``OUT/<layer>``) or any
folder of ``<utterance id>.npy`` files (``--frame-rate``, default 100). Prints
one row per condition: both error rates in percent and their difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from audiossl.features import FeatureSet
from audiossl.probes.abx.item_files import ItemABXSettings, item_file_score
from audiossl.probes.abx.items import read_item_file


def npy_files(folder: Path) -> dict[str, Path]:
    """utterance id (file stem) -> path, for every .npy below ``folder`` (the reference's lookup).

    The reference reads every file its walk finds: two files of one stem (a
    stale array left by an extraction into another tree) would give their
    items twice, so they are refused here.
    """
    found: dict[str, Path] = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".npy"):
                stem = Path(name).stem
                if stem in found:
                    raise SystemExit(f"{folder}: {found[stem]} and {Path(root) / name} have one utterance id; "
                                     f"zrc-abx2 would read both: use a folder with one array per utterance")
                found[stem] = Path(root) / name
    return found


def audiossl_scores(folder: Path, item_path: Path, settings: ItemABXSettings, frame_rate: float) -> dict:
    items = read_item_file(item_path)
    if (folder / "index.tsv").is_file():
        features = FeatureSet(folder)
        score = item_file_score(items, features.load, features.num_frames, features.frame_rate, settings)
    else:
        paths = npy_files(folder)
        frames = {u: np.load(p, mmap_mode="r").shape[0] for u, p in paths.items()}
        score = item_file_score(items, lambda u: np.load(paths[u]), frames, frame_rate, settings)
    return {c: v["error"] for c, v in score["conditions"].items()}


def reference_scores(folder: Path, item_path: Path, settings: ItemABXSettings, frame_rate: float,
                     file_order: list[str] | None) -> dict:
    """zrc-abx2's scores; ``file_order``: hand it the files in this order instead of its walk's."""
    from zrc_abx2.eval_ABX import EvalABX, EvalArgs

    class Ordered(EvalABX):
        def _find_all_files(self, path_dir, extension):
            found = super()._find_all_files(path_dir, extension)
            if file_order is None:
                return found
            rank = {u: n for n, u in enumerate(file_order)}
            return sorted(found, key=lambda entry: rank.get(entry[0], len(rank)))

    args = EvalArgs(str(folder), str(item_path), feature_size=1 / frame_rate, distance_mode="cosine",
                    max_size_group=settings.max_size_group, max_x_across=settings.max_x_across, seed=settings.seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = Ordered().eval_abx(args)
    return {f"{row['abx-s-condition']}-{row['abx-c-condition']}": row["score"] for row in rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, type=Path, help="a layer folder, or a folder of <id>.npy files")
    parser.add_argument("--item-file", required=True, type=Path)
    parser.add_argument("--frame-rate", type=float, default=100.0, help="frames per second of a plain .npy folder")
    parser.add_argument("--max-size-group", type=int, default=10)
    parser.add_argument("--max-x-across", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3459)
    parser.add_argument("--no-walk-order", action="store_true", help="skip the reference's own file order")
    args = parser.parse_args(argv)
    try:
        import zrc_abx2  # noqa: F401
    except ImportError:
        print("zrc-abx2 is not installed: pip install Cython && pip install zerospeech-libriabx2", file=sys.stderr)
        return 2
    settings = ItemABXSettings(max_size_group=args.max_size_group, max_x_across=args.max_x_across, seed=args.seed)
    frame_rate = FeatureSet(args.features).frame_rate if (args.features / "index.tsv").is_file() else args.frame_rate
    npy_files(args.features)  # refuses a folder where the reference would read an utterance twice
    order = list(dict.fromkeys(read_item_file(args.item_file).file))
    timings = {}
    began = time.perf_counter()
    ours = audiossl_scores(args.features, args.item_file, settings, frame_rate)
    timings["audiossl"] = time.perf_counter() - began
    began = time.perf_counter()
    same = reference_scores(args.features, args.item_file, settings, frame_rate, order)
    timings["zrc-abx2"] = time.perf_counter() - began
    walk = None if args.no_walk_order else reference_scores(args.features, args.item_file, settings, frame_rate, None)
    print(f"features {args.features}, items {args.item_file}, frame rate {frame_rate:g}/s, "
          f"max_size_group {settings.max_size_group}, max_x_across {settings.max_x_across}, seed {settings.seed}")
    header = f"{'condition':<15}{'audiossl %':>12}{'zrc-abx2 %':>12}{'difference':>12}"
    print(header + (f"{'zrc-abx2 walk order %':>24}" if walk else ""))
    worst = 0.0
    for condition in settings.conditions:
        a, b = 100 * ours[condition], 100 * same[condition]
        worst = max(worst, abs(a - b))
        line = f"{condition:<15}{a:>12.4f}{b:>12.4f}{a - b:>+12.4f}"
        print(line + (f"{100 * walk[condition]:>24.4f}" if walk else ""))
    print(f"largest difference {worst:.4f} points; seconds: audiossl {timings['audiossl']:.1f}, "
          f"zrc-abx2 {timings['zrc-abx2']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

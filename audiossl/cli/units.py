"""``audiossl units``: k-means on extracted features (fit) and unit sequences (assign)."""

from __future__ import annotations

import argparse
import json

from audiossl.cli.options import count, device_from, non_negative_float, positive_int, seed
from audiossl.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from audiossl.units.assign import ONEHOT_FORMATS
    from audiossl.units.fit import STANDARDIZE, FitSettings

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
    t.add_argument("--k", type=positive_int, default=fit_defaults.kmeans.k, help="units (clusters)")
    t.add_argument("--max-frames", type=count, default=fit_defaults.max_frames,
                   help="frames drawn to fit on, uniformly over every frame of the utterances (0: all)")
    t.add_argument("--standardize", choices=STANDARDIZE, default=fit_defaults.standardize,
                   help="scale every dimension to zero mean and unit variance before clustering, with each "
                   "utterance's own statistics (utterance, the default) or the fitting sample's (global, kept in "
                   "the model)")
    t.add_argument("--no-standardize", action="store_true", help="cluster the raw features (--standardize none)")
    t.add_argument("--batch-size", type=positive_int, default=fit_defaults.kmeans.batch_size,
                   help="frames per mini-batch")
    t.add_argument("--max-epochs", type=positive_int, default=fit_defaults.kmeans.max_epochs,
                   help="most passes over the sample")
    t.add_argument("--tol", type=non_negative_float, default=fit_defaults.kmeans.tol,
                   help="stop when an epoch lowers the mean squared distance by less than this fraction")
    t.add_argument("--init-size", type=count, default=fit_defaults.kmeans.init_size,
                   help="frames the k-means++ start sees (0: 3 x --batch-size)")
    t.add_argument("--seed", type=seed, default=fit_defaults.kmeans.seed, help="frame sample and k-means")
    t.set_defaults(func=cmd_units)
    t = actions.add_parser("assign", parents=[common], help="unit sequences (ZeroSpeech 2021 text) and one-hot "
                           "features of every utterance; re-running resumes")
    t.add_argument("--units", required=True, help="an audiossl units fit folder")
    t.add_argument("--layer", help="layer folder of --features (default: the one the units were fitted on)")
    t.add_argument("--onehot", choices=ONEHOT_FORMATS, default="npy",
                   help="one-hot (frames, k) arrays under OUT/onehot, or none")
    t.set_defaults(func=cmd_units)


def cmd_units(args: argparse.Namespace) -> int:
    import dataclasses

    from audiossl.units.assign import assign_units
    from audiossl.units.fit import FitSettings, UnitModel, fit_units
    from audiossl.units.kmeans import KMeansSettings

    device, progress = device_from(args.device), not args.no_progress
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

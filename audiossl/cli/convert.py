"""``audiossl convert``: CPC_audio checkpoints to audiossl's and back; w2v2 / HuBERT models to Hugging Face folders."""

from __future__ import annotations

import argparse

import yaml

from audiossl.cli.options import print_config
from audiossl.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="CPC_audio checkpoints to audiossl's and back; w2v2 and hubert models to "
                       "Hugging Face folders")
    p.add_argument("source", metavar="SOURCE", help="with --from cpc_audio: a CPC_audio training folder (its highest "
                   "epoch), checkpoint_<epoch>.pt or release file; with --to: an audiossl checkpoint")
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_format", choices=["cpc_audio"], help="convert into audiossl's format")
    direction.add_argument("--to", dest="to_format", choices=["cpc_audio", "cpc_audio-release", "hf"],
                           help="cpc_audio: a training folder CPC_audio resumes from; cpc_audio-release: a "
                           "{config, weights} file, as its published checkpoints (s3prl's cpc_local reads it); hf: "
                           "a Hugging Face Wav2Vec2Model / HubertModel folder (a w2v2 or hubert model of "
                           "transformers' layout: docs/masked.md)")
    p.add_argument("--out", required=True, help="the checkpoint, folder or release file to write")
    p.add_argument("--config-out", help="with --from: also write the run's flat YAML config, for train --config")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from audiossl.checkpoint import atomic_save
    from audiossl.config import Config
    from audiossl.interop.cpc_audio import from_cpc_audio, to_cpc_audio, to_cpc_audio_release

    if args.from_format:
        ckpt, notes = from_cpc_audio(args.source)
        cfg = Config.from_dict(ckpt["config"])
        print_config(cfg)
        atomic_save(ckpt, args.out)
        if args.config_out:
            from audiossl.utils.atomic import atomic_write

            text = yaml.safe_dump(cfg.flat(), sort_keys=False)
            atomic_write(args.config_out, lambda f: f.write(text.encode()), what="config")
        read = ckpt["converted_from"]
        source = f"epoch {read['epoch']} of {read['path']}" if read["epoch"] is not None else read["path"]
    elif args.config_out:
        raise ConfigError("--config-out goes with --from: it writes the converted run's audiossl config")
    else:
        from audiossl.interop.hf_export import to_hf

        writers = {"cpc_audio": to_cpc_audio, "cpc_audio-release": to_cpc_audio_release, "hf": to_hf}
        notes = writers[args.to_format](args.source, args.out)
        source = args.source
    for note in notes:
        print(f"note: {note}")
    print(f"{args.out}: converted from {source}"
          + (f"; its config: {args.config_out}" if args.from_format and args.config_out else ""))
    return 0

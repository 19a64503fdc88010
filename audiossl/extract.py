"""Feature extraction: a checkpoint (or a hand-made feature) -> per-utterance numpy arrays.

Writes the folder layout of :mod:`audiossl.features`: ``OUT/<layer>/`` with
one ``.npy`` (or compressed ``.npz``) array per utterance in a tree mirroring
the audio's relative paths, ``meta.json``, ``utterances.tsv`` and
``index.tsv`` (id, path, frames, dim, frame rate, layer, checkpoint). One
sub-folder per layer (``encoder``, ``context``, ``context_1`` ...; the
hand-made baselines are ``mfcc`` and ``logmel``), each a :class:`FeatureSet`
the probes read. Every file is written atomically and ``index.tsv`` last, so
an interrupted run leaves no half-written array and a second run skips what is
already there (a folder made from another checkpoint or with other settings is
refused, never mixed). "Already there" means an array made from the audio file
as it is now: ``sources.tsv`` in each layer folder records the size and
modification time of the file each array came from, and an array whose audio
changed since is made again; the run prints how many arrays it reused, added
and redid. A file that fails to decode (deleted or truncated since the scan)
is named on stderr and left out of the index; the run goes on and a later run
retries it. The run holds ``OUT/.lock`` (:mod:`audiossl.utils.lock`; a second
extraction into the folder waits for it), so it can remove the temporary files
a killed run left, and it never writes through a
folder symlink that leads out of ``OUT``.

How it runs is one :class:`ExtractOptions`. Utterances are batched by length
(:mod:`audiossl.data.utterance_batches`), at most ``batch_size`` of them and at most ``batch_seconds`` of padded audio
per forward pass, so a long file goes alone instead of padding its neighbours to its length; a padded batch gives
the features of per-utterance runs. Long files can be cut into chunks of ``chunk_seconds``: each chunk is encoded
with a margin of the receptive field on both sides and the recurrent state is carried from chunk to chunk, so the
result equals one pass over the file while the model's memory stays bounded (the audio and the features of the
file itself remain). Transformer contexts and per-utterance CMVN need whole utterances and refuse chunking. A
Hugging Face or fairseq model (:mod:`audiossl.interop`) batches and chunks itself: its bidirectional Transformer
chunks with a margin of context, not equal to one pass, and ``meta.json`` records its ``chunk_seconds``. The
progress bar shows the real-time factor: seconds of audio processed per wall-clock second.

Reference: CPC_audio's ``cpc/eval/build_zeroSpeech_features.py``; its
``--get_encoded`` is ``layers=("encoder",)`` here, ``--max_size_seq`` is
``chunk_seconds`` and ``--seq_norm`` (per-utterance normalization of the
output) is left to the probes, which standardize with training-set statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from audiossl.data.alignments import load_split
from audiossl.data.corpus import Utterance, load_corpus
from audiossl.data.utterance_batches import AudioFiles, collate_files, length_batches
from audiossl.features import (
    FORMATS,
    INDEX,
    META,
    NPZ_KEY,
    SOURCES,
    VERSION,
    FeatureError,
    FeatureSet,
    audio_stamp,
    check_inside,
    feature_path,
    read_sources,
    relative_paths,
    stored_frames,
    write_index,
)
from audiossl.models.baselines import build_baseline
from audiossl.models.model import SSLModel
from audiossl.utils.atomic import atomic_write, remove_stale_temps
from audiossl.utils.lock import FolderLock
from audiossl.utils.stopping import ignore_in_worker, stop_point, stop_requested

# FeatureError and FeatureSet are re-exported: probes and reports import them from here.
__all__ = ["ExtractOptions", "FeatureError", "FeatureSet", "extract", "forward_chunked", "open_source",
           "select_utterances"]

DTYPES = ("float32", "float16")


def select_utterances(data: str | Path, id_files: Sequence[str | Path] = (), speaker_level: int = -1,
                      progress: bool = True, missing_ok: bool = False) -> tuple[list[Utterance], list]:
    """The utterances of a corpus folder or manifest, optionally only those listed.

    Args:
        data: a corpus folder or a manifest TSV.
        id_files: split lists (one utterance id per line); when given, only
            their utterances are kept, in corpus order.
        missing_ok: keep going when a listed id is not in ``data`` (the
            probes report such utterances); else raise a FeatureError.

    Returns:
        The utterances and the files skipped while scanning (see ``load_corpus``).
    """
    utterances, problems = load_corpus(data, speaker_level=speaker_level, progress=progress)
    if not id_files:
        return utterances, problems
    wanted: set[str] = set()
    for path in id_files:
        try:
            wanted.update(load_split(path))
        except ValueError as e:
            raise FeatureError(str(e)) from None
    known = {u.id for u in utterances}
    missing = sorted(wanted - known)
    if missing and not missing_ok:
        raise FeatureError(f"{len(missing)} listed utterance(s) are not in {data}, e.g. {', '.join(missing[:3])}")
    return [u for u in utterances if u.id in wanted], problems


def open_source(checkpoint: str | Path | None = None, baseline: str | None = None,
                layers: Sequence[str] = ("context",), device: str | torch.device = "cpu",
                sample_rate: int = 16000) -> tuple[torch.nn.Module, dict[str, str], dict]:
    """The model to extract from, its ``{folder name: model layer}`` and the source recorded in ``meta.json``.

    Args:
        checkpoint: a trained model's ``checkpoint.pt``, a Hugging Face model folder or a fairseq checkpoint
            (:func:`audiossl.interop.sources.open_model`; exactly one of ``checkpoint`` and ``baseline``).
        baseline: ``mfcc`` or ``logmel``: its one layer goes to a folder of that name.
        layers: the checkpoint model's layers to extract.
        device: where a checkpoint is loaded.
        sample_rate: of a baseline's input audio.
    """
    if (checkpoint is None) == (baseline is None):
        raise FeatureError("extract from a checkpoint or from a baseline: give exactly one")
    if baseline is not None:
        try:
            return build_baseline(baseline, sample_rate), {baseline: "encoder"}, {"baseline": baseline}
        except ValueError as e:
            raise FeatureError(str(e)) from None
    from audiossl.interop.sources import open_model

    model, source = open_model(checkpoint, device)  # its digest: a retrained model's re-run is refused, not mixed
    return model, {name: name for name in layers}, source


def _check_chunkable(model: SSLModel, layers: Sequence[str]) -> None:
    if getattr(model.frontend, "cmvn", False):
        raise FeatureError("per-utterance input normalization (cmvn) needs whole utterances: "
                           "extract with chunk_seconds=0")
    if any(name != "encoder" for name in layers) and not model.context.carries_state:
        raise FeatureError(f"a {type(model.context).__name__} context carries no state across chunks: "
                           "extract with chunk_seconds=0, or only the encoder layer")


@torch.inference_mode()
def forward_chunked(model: SSLModel, wavs: torch.Tensor, lengths: torch.Tensor, layers: Sequence[str],
                    chunk_frames: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Named layer outputs of a batch, optionally ``chunk_frames`` frames at a time.

    Each chunk of output frames ``[f0, f1)`` is encoded from the samples
    ``[f0 hop - margin, f1 hop + margin)`` (clipped to the batch), where the
    margin, a multiple of the hop, covers the receptive field; the encoder's
    frames outside ``[f0, f1)`` are dropped and the context network continues
    from the previous chunk's state. The result equals one pass.

    Args:
        model: in eval mode.
        wavs: (batch, samples).
        lengths: (batch,) valid samples per row.
        layers: names from ``model.layer_names``.
        chunk_frames: output frames per chunk; 0 processes the batch at once.

    Returns:
        ``{layer: (batch, frames, dim)}`` and the (batch,) frame lengths.
    """
    if not isinstance(model, SSLModel):  # another library's model batches and chunks its own way
        return model.forward_chunked(wavs, lengths, layers, chunk_frames)
    hop = model.hop
    frame_lengths = model.output_lengths(lengths)
    total = int(frame_lengths.max())
    if total == 0:  # every file is shorter than the receptive field
        dims = {name: model.named_outputs()[name] for name in layers}
        return {name: wavs.new_zeros(len(wavs), 0, dim) for name, dim in dims.items()}, frame_lengths
    if chunk_frames <= 0 or chunk_frames >= total:
        chunk_frames, margin = total, 0
    else:
        _check_chunkable(model, layers)
        margin = (math.ceil(model.receptive_field / hop) + 1) * hop
    pieces: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    state = None
    for f0 in range(0, total, chunk_frames):
        f1 = min(f0 + chunk_frames, total)
        s0 = max(0, f0 * hop - margin)
        s1 = wavs.shape[1] if f1 == total else min(wavs.shape[1], f1 * hop + margin)
        z, _ = model.encode(wavs[:, s0:s1], (lengths - s0).clamp(0, s1 - s0))
        first = f0 - s0 // hop  # s0 is a multiple of the hop: frames stay on the one-pass grid
        z = z[:, first: first + f1 - f0]  # (B, f1 - f0, D)
        named = {"encoder": z}
        if any(name != "encoder" for name in layers):
            outputs, state = model.contextualize(z, (frame_lengths - f0).clamp(0, f1 - f0), state)
            named.update(context=outputs[-1], **{f"context_{i + 1}": y for i, y in enumerate(outputs)})
        for name in layers:
            pieces[name].append(named[name])
    return {name: torch.cat(chunks, dim=1) for name, chunks in pieces.items()}, frame_lengths


def _prepare_folder(folder: Path, meta: dict) -> None:
    """Refuse a folder made by something else; start this run's bookkeeping."""
    meta_path = folder / META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        differ = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if differ:
            raise FeatureError(f"{folder} holds features made with other settings ({', '.join(differ)}); "
                               "use another output folder or delete this one")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).unlink(missing_ok=True)  # written again once every array is there
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode() + b"\n"))


@dataclass(frozen=True)
class ExtractOptions:
    """How :func:`extract` reads, batches and writes (``audiossl extract`` sets them from its flags)."""
    root: str | Path | None = None  # the corpus folder the output tree mirrors; None: the files' common parent
    file_format: str = "npy"  # npy, or npz (compressed)
    batch_size: int = 8  # most utterances per forward pass (sorted by length)
    batch_seconds: float = 160.0  # most padded audio per forward pass (utterances x the longest); longer: alone
    chunk_seconds: float = 0.0  # longest stretch of audio encoded at once; 0: whole files
    dtype: str = "float32"  # float32 or float16 arrays on disk
    device: str | torch.device = "cpu"  # where the model runs
    num_workers: int = 0  # DataLoader processes decoding audio
    progress: bool = True  # a progress bar

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES or self.file_format not in FORMATS:
            raise FeatureError(f"dtype {self.dtype!r} and format {self.file_format!r} must be one of "
                               f"{', '.join(DTYPES)} and one of {', '.join(FORMATS)}")
        if self.batch_size <= 0 or self.chunk_seconds < 0 or self.batch_seconds <= 0:
            raise FeatureError(f"batch_size and batch_seconds must be positive and chunk_seconds non-negative, "
                               f"got {self.batch_size}, {self.batch_seconds} and {self.chunk_seconds}")


def extract(model: SSLModel, utterances: list[Utterance], out_dir: str | Path,
            layers: Mapping[str, str] | Sequence[str] = ("context",), source: dict | None = None,
            options: ExtractOptions = ExtractOptions()) -> dict[str, FeatureSet]:
    """Write the features of ``utterances`` to ``out_dir``, one folder per layer.

    Args:
        model: an :class:`SSLModel` (``audiossl.load_model``, ``models.baselines.build_baseline``) or another
            library's model (:func:`open_source`); it is put in eval mode.
        utterances: what to extract; audio is resampled to the model's rate.
        out_dir: the extraction folder (see the module docstring).
        layers: model layer names, or ``{folder name: model layer}``.
        source: what made the model (``{"checkpoint": path, "sha256": ...}``
            or ``{"baseline": name}``, see :func:`open_source`); stored in
            ``meta.json`` and compared on re-runs.
        options: the output tree's root, file format and dtype, batching,
            chunking, device, workers, progress bar.

    Returns:
        ``{folder name: FeatureSet}``; files that failed to decode are named
        on stderr and absent from every set.
    """
    if not utterances:
        raise FeatureError("no utterances to extract")
    layers = dict(layers) if isinstance(layers, Mapping) else {name: name for name in layers}
    if not layers:
        raise FeatureError("no layers to extract")
    unknown = sorted(set(layers.values()) - set(model.layer_names))
    if unknown:
        raise FeatureError(f"unknown layer(s) {unknown}; this model has {', '.join(model.layer_names)}")
    relative = relative_paths(utterances, options.root, options.file_format)  # refuses escapes before any write
    # Absolute paths: the folder's manifest must stay valid wherever it is read from.
    utterances = [dataclasses.replace(u, path=str(Path(u.path).resolve())) for u in utterances]
    options = dataclasses.replace(options, device=torch.device(options.device))
    model = model.to(options.device).eval()
    chunk_frames = round(options.chunk_seconds * model.frame_rate)
    if chunk_frames and isinstance(model, SSLModel):
        _check_chunkable(model, list(layers.values()))

    out_dir, source = Path(out_dir), source or {}
    with FolderLock(out_dir, "audiossl extract", wait=True):  # a concurrent extraction finishes first
        folders = _prepare_folders(model, out_dir, layers, source, relative, options, chunk_frames)
        return _extract(model, utterances, out_dir, folders, layers, source, relative, options, chunk_frames)


def _prepare_folders(model: SSLModel, out_dir: Path, layers: dict[str, str], source: dict,
                     relative: dict[str, PurePath], options: ExtractOptions, chunk_frames: int) -> dict[str, Path]:
    """Each layer's folder, checked (inside ``out_dir``, made with these settings) and cleaned of a killed run's
    temporary files (the lock keeps out live writers)."""
    folders = {name: out_dir / name for name in layers}
    check_inside(out_dir, folders, relative)
    for folder in folders.values():
        remove_stale_temps(folder, recursive=True)
    for name, layer in layers.items():
        _prepare_folder(folders[name], {
            "version": VERSION, "layer": layer, "source": source, "dim": model.named_outputs()[layer],
            "frame_rate": model.frame_rate, "hop": model.hop, "sample_rate": model.sample_rate,
            "dtype": options.dtype, "format": options.file_format,
            **({} if getattr(model, "chunks_exactly", True) else {"chunk_seconds": chunk_frames / model.frame_rate}),
        })
    return folders


def _already_done(utterances: list[Utterance], folders: dict[str, Path], relative: dict[str, PurePath]
                  ) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """Resume: the frames of each utterance whose every layer's array is readable and made from the audio as it
    is now, each utterance's audio stamp, and the utterances whose arrays are there but stale or partial."""
    recorded = {name: read_sources(folder) for name, folder in folders.items()}
    num_frames: dict[str, int] = {}
    stamps: dict[str, str] = {}
    redone: list[str] = []
    for u in utterances:
        stamps[u.id] = audio_stamp(u.path)
        stored = {stored_frames(folder / relative[u.id]) for folder in folders.values()}
        fresh = all(recorded[name].get(u.id) == stamps[u.id] for name in folders)
        if len(stored) == 1 and None not in stored and fresh:
            num_frames[u.id] = stored.pop()
        elif stored != {None}:
            redone.append(u.id)
    return num_frames, stamps, redone


def _extract(model: SSLModel, utterances: list[Utterance], out_dir: Path, folders: dict[str, Path],
             layers: dict[str, str], source: dict, relative: dict[str, PurePath], options: ExtractOptions,
             chunk_frames: int) -> dict[str, FeatureSet]:
    device = options.device
    num_frames, stamps, redone = _already_done(utterances, folders, relative)
    reused = len(num_frames)
    pending = sorted((u for u in utterances if u.id not in num_frames), key=lambda u: -u.num_samples / u.sample_rate)
    batches = length_batches([u.num_samples / u.sample_rate for u in pending], options.batch_size,
                             options.batch_seconds)
    journals = {name: open(folder / SOURCES, "a") for name, folder in folders.items()}
    loader = DataLoader(AudioFiles(pending, model.sample_rate), batch_sampler=batches, collate_fn=collate_files,
                        num_workers=options.num_workers, pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_in_worker)
    bar = tqdm(total=len(utterances), initial=len(num_frames), desc=f"extract {out_dir.name}", unit="utt",
               disable=not options.progress, dynamic_ncols=True)
    failed, audio_seconds, began = [], 0.0, time.perf_counter()
    for indices, wavs, lengths, failures in loader:
        for index, message in failures:
            failed.append(pending[index].id)
            tqdm.write(f"skipped {pending[index].id}: {message}", file=sys.stderr)
        if indices:
            feats, frame_lengths = forward_chunked(model, wavs.to(device), lengths.to(device),
                                                   list(layers.values()), chunk_frames)
            arrays = {name: feats[layer].float().cpu().numpy() for name, layer in layers.items()}
            for row, index in enumerate(indices):
                utt, frames = pending[index], int(frame_lengths[row])
                for name, folder in folders.items():
                    array = np.ascontiguousarray(arrays[name][row, :frames], dtype=options.dtype)
                    save = ((lambda f: np.savez_compressed(f, **{NPZ_KEY: array})) if options.file_format == "npz"
                            else (lambda f: np.save(f, array)))
                    atomic_write(feature_path(folder, relative[utt.id], utt.id), save)
                    journals[name].write(f"{utt.id}\t{stamps[utt.id]}\n")
                    journals[name].flush()
                num_frames[utt.id] = frames
            audio_seconds += float(lengths.sum()) / model.sample_rate
        bar.update(len(indices) + len(failures))
        # Real-time factor: seconds of audio per wall-clock second.
        bar.set_postfix_str(f"{audio_seconds / max(time.perf_counter() - began, 1e-9):.1f}x real time")
        if stop_requested():  # a stop signal: this batch's arrays are whole; the ones before the next are kept
            break
    bar.close()
    for journal in journals.values():
        journal.close()
    added = len(num_frames) - reused - sum(u in num_frames for u in redone)
    print(f"{out_dir}: {reused} array set(s) reused, {added} added, {sum(u in num_frames for u in redone)} redone"
          + (f" (audio changed since, or no record of it: e.g. {', '.join(redone[:3])})" if redone else ""))
    stop_point(f"after {len(num_frames)} of {len(utterances)} utterances (no index.tsv yet)")

    done = [u for u in utterances if u.id in num_frames]
    if not done:
        raise FeatureError(f"none of the {len(utterances)} files could be decoded (named above); no features "
                           f"in {out_dir}")
    if failed:
        tqdm.write(f"{len(failed)} of {len(utterances)} file(s) failed to decode and were skipped "
                   f"(e.g. {', '.join(failed[:3])}); running again retries them", file=sys.stderr)
    for name, folder in folders.items():
        write_index(folder, done, relative, num_frames, model.named_outputs()[layers[name]],
                    f"{model.frame_rate:g}", layers[name], source)
    return {name: FeatureSet(folder) for name, folder in folders.items()}

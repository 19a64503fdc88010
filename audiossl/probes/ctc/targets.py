"""What the recognition probes output: phone sequences and sentencepiece pieces.

Phones: the CPC release's frame labels (``converted_aligned_phones.txt``, one
phone class per 10 ms) collapsed into the utterance's phone sequence:
consecutive equal labels merge into one phone and the silence class is dropped
(CTC needs no silence symbol; its blank absorbs pauses). Two identical phones
in a row (``T`` ending one word, ``T`` starting the next) are one run of
labels and so become one phone: the frame labels cannot tell them apart.

Silence: the class named ``SIL`` in the phone inventory (``phones.txt``);
without an inventory, class 0 (the numbering of ``tools/make_corpus.py``; the
CPC release does not name its classes).

Sentencepiece pieces (Kudo and Richardson 2018): a unigram language-model
(Kudo 2018) or BPE segmentation trained on the training transcripts, the
output units of ``ctc-subword``. Transcripts are LibriSpeech's
``<speaker>-<chapter>.trans.txt`` files (``<utt_id> TEXT`` per line) found
beside each utterance's audio, or a given file or folder of them. Text is
normalized to upper case with single spaces (LibriSpeech's own form); the
pieces are trained with sentencepiece's ``identity`` normalization, so
``decode(encode(text)) == text`` for any text made of characters seen in
training. The model is saved with a ``.json`` record of how it was trained and
reused when asked for again with the same settings and text.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from audiossl.data.alignments import load_phone_inventory
from audiossl.data.corpus import Utterance
from audiossl.probes.tasks import ProbeError
from audiossl.utils.atomic import atomic_write

__all__ = [
    "SP_TYPES",
    "SubwordUnits",
    "load_transcripts",
    "normalize_text",
    "phone_sequence",
    "silence_class",
    "train_units",
    "transcripts_for",
]

SP_TYPES = ("unigram", "bpe")
SILENCE = "SIL"
TRANSCRIPT_SUFFIX = ".trans.txt"


def silence_class(phones: str | Path | None) -> int | None:
    """The silence class: ``SIL`` in the inventory (None if it has none), else 0."""
    if phones is None:
        return 0
    try:
        names = load_phone_inventory(phones)
    except ValueError as e:
        raise ProbeError(str(e)) from None
    return names.index(SILENCE) if SILENCE in names else None


def phone_sequence(labels: np.ndarray, silence: int | None = 0) -> np.ndarray:
    """Frame labels -> phone sequence: runs merged, the silence class dropped.

    Args:
        labels: (frames,) integer phone classes.
        silence: the class to drop; None keeps every class.

    Returns:
        (phones,) int64.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return labels
    runs = labels[np.r_[True, labels[1:] != labels[:-1]]]
    return runs if silence is None else runs[runs != silence]


def normalize_text(text: str) -> str:
    """Upper case, single spaces, no leading or trailing space."""
    return " ".join(text.upper().split())


def _read_transcript_file(path: Path, into: dict[str, str]) -> None:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split(maxsplit=1)
            if not fields:
                continue
            utt_id = fields[0]
            if utt_id in into:
                raise ProbeError(f"{path}:{number}: utterance {utt_id!r} has a second transcript")
            into[utt_id] = normalize_text(fields[1] if len(fields) > 1 else "")


def load_transcripts(sources: Iterable[str | Path]) -> dict[str, str]:
    """Transcripts from files (``<utt_id> TEXT`` lines) or folders of ``*.trans.txt``.

    Args:
        sources: transcript files, or folders searched recursively for
            ``*.trans.txt``.

    Returns:
        utterance id -> normalized text.
    """
    transcripts: dict[str, str] = {}
    for source in sources:
        source = Path(source)
        if source.is_dir():
            files = sorted(source.rglob(f"*{TRANSCRIPT_SUFFIX}"))
        elif source.is_file():
            files = [source]
        else:
            raise ProbeError(f"{source}: no such transcript file or folder")
        for path in files:
            _read_transcript_file(path, transcripts)
    return transcripts


def transcripts_for(utterances: Sequence[Utterance]) -> dict[str, str]:
    """The ``*.trans.txt`` transcripts in the folders of ``utterances``' audio (LibriSpeech layout)."""
    folders = sorted({Path(u.path).parent for u in utterances})
    files = [path for folder in folders for path in sorted(folder.glob(f"*{TRANSCRIPT_SUFFIX}"))]
    return load_transcripts(files)


class SubwordUnits:
    """A trained sentencepiece model; piece ids are ``0 .. size - 1`` (0 is ``<unk>``).

    Args:
        model_proto: the serialized sentencepiece model.
    """

    def __init__(self, model_proto: bytes):
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(normalize_text(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in ids])

    def pieces(self, text: str) -> list[str]:
        return self.processor.encode(normalize_text(text), out_type=str)


def train_units(texts: Sequence[str], path: str | Path, vocab_size: int = 100,
                model_type: str = "unigram") -> SubwordUnits:
    """Train sentencepiece units on ``texts`` into ``path``, or reuse the ones there.

    ``vocab_size`` is an upper bound (sentencepiece's ``hard_vocab_limit=false``):
    a tiny corpus may support fewer pieces. No ``<s>``/``</s>`` pieces are made
    (``bos_id=eos_id=-1``); every character of the texts is covered
    (``character_coverage=1``).

    Args:
        texts: training transcripts (normalized here).
        path: the model file (e.g. ``DIR/units.model``); ``DIR/units.json``
            records the settings and a digest of the text.
        vocab_size: most pieces, ``<unk>`` included.
        model_type: ``unigram`` or ``bpe``.

    Returns:
        The units.

    Raises:
        ProbeError: for bad settings, no text, or a model at ``path`` made
            with other settings or text.
    """
    if model_type not in SP_TYPES:
        raise ProbeError(f"sentencepiece type {model_type!r} is not one of {', '.join(SP_TYPES)}")
    if vocab_size < 2:
        raise ProbeError(f"vocab_size must be at least 2, got {vocab_size}")
    lines = [t for t in (normalize_text(t) for t in texts) if t]
    if not lines:
        raise ProbeError("no transcript text to train sentencepiece units on")
    path = Path(path)
    record_path = path.with_suffix(".json")
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    record = {"vocab_size": vocab_size, "model_type": model_type, "num_sentences": len(lines), "text_sha256": digest}
    if path.is_file():
        old = json.loads(record_path.read_text()) if record_path.is_file() else {}
        differ = sorted(k for k in record if old.get(k) != record[k])
        if differ:
            raise ProbeError(f"{path} was made with other settings or text ({', '.join(differ)}); "
                             "delete it or choose another file")
        return SubwordUnits(path.read_bytes())
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="identity",
        bos_id=-1, eos_id=-1, num_threads=1, minloglevel=2)
    atomic_write(path, lambda f: f.write(model.getvalue()))
    units = SubwordUnits(model.getvalue())
    summary = json.dumps({**record, "num_pieces": units.size}, indent=2) + "\n"
    atomic_write(record_path, lambda f: f.write(summary.encode()))
    return units

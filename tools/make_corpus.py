#!/usr/bin/env python3
"""Synthesize a small LibriSpeech-layout corpus offline with Debian's flite.

The corpus mimics what the CPC phone/speaker probes expect from LibriSpeech
``train-clean-100`` plus the CPC release files:

* ``<out>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
  (mono, 16 kHz, 16-bit FLAC) and ``<speaker>-<chapter>.trans.txt`` files
  with ``<utt_id> TRANSCRIPT`` lines (upper case, like LibriSpeech).
* ``<out>/converted_aligned_phones.txt``: one line per utterance,
  ``<utt_id> l1 ... ln``, one integer label per 10 ms frame (160 samples),
  ``n = num_samples // 160``; frame ``i`` gets the phone that covers its
  centre ``(i * 160 + 80) / 16000`` seconds.
* ``<out>/phones.txt``: the fixed 41-class inventory, ``<index> <PHONE>``:
  ``SIL`` = 0, then the 39 CMU ARPAbet phones (no stress) in alphabetical
  order (``AA`` = 1 ... ``ZH`` = 39), then ``SPN`` = 40.
* ``<out>/train_split.txt`` and ``<out>/test_split.txt``: utterance ids,
  split within each speaker so every speaker appears in both.
* ``<out>/README.md``: how the corpus was made, counts and total duration.
* ``<out>/channel.tsv``, with ``--channel vary`` only: every utterance's drawn
  channel (reverberation, EQ, gain, noise at a drawn SNR; ``tools/channel.py``).
  The default ``--channel none`` writes the clean audio, byte for byte what
  this tool wrote before the option existed.

Sentences are random but English-looking, generated from an embedded word
list with a tiny grammar. Speakers are derived from flite's built-in voices
(``awb``, ``rms``, ``slt``, ``kal16``; unavailable ones are skipped): each
speaker is a base voice with its own duration stretch, a speed/pitch warp by
resampling with ``sox`` (factor 0.85-1.18, stratified so speakers that share a
voice are spread apart), a first-order spectral tilt and a peak level. flite
reports every phone with its end time (``-psdur``); the times are scaled by
the exact resampling ratio. The output is deterministic for the same
arguments.

Example::

    python tools/make_corpus.py --out data/demo --speakers 8 --utterances 14
    python tools/make_corpus.py --out /tmp/noisy --speakers 8 --utterances 14 --channel vary
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.pool
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

import channel  # tools/channel.py, beside this script

SAMPLE_RATE = 16000
FRAME_SHIFT = 160
DEFAULT_VOICES = ("awb", "rms", "slt", "kal16")
INSTALL_HINT = "install them with: apt-get install flite sox"

ARPABET = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG "
    "OW OY P R S SH T TH UH UW V W Y Z ZH"
).split()
PHONES = ["SIL", *ARPABET, "SPN"]
PHONE_INDEX = {phone: index for index, phone in enumerate(PHONES)}

# flite's cmu US phone set is lowercase ARPAbet without stress plus a few
# extras; everything not listed here and not in ARPABET becomes SPN.
FLITE_PHONE_MAP = {"pau": "SIL", "h#": "SIL", "sil": "SIL", "ax": "AH", "axr": "ER"}

WARP_RANGE = (0.85, 1.18)
STRETCH_RANGE = (0.92, 1.10)
TILT_RANGE = (-0.5, 0.6)
PEAK_DB_RANGE = (-6.0, -1.0)
MIN_WORDS, MAX_WORDS = 6, 14

NAMES = """
ALICE ANNA ARTHUR CLARA DAVID EDWARD ELLEN EMMA FRANK GEORGE HARRY HELEN
HENRY JAMES JANE JOHN LUCY MARGARET MARTHA MARY PETER ROBERT SARAH THOMAS
WALTER WILLIAM
""".split()
PRONOUNS = "HE SHE THEY WE I YOU".split()
DETERMINERS = "THE THE THE A A THAT THIS HIS HER OUR THEIR MY YOUR EVERY EACH ONE".split()
NOUNS = """
APPLE BASKET BED BELL BIRD BOAT BOOK BOTTLE BOX BOY BRANCH BREAD BRIDGE
BROTHER BUCKET CANDLE CAPTAIN CARRIAGE CASTLE CAT CHAIR CHILD CHURCH CITY
CLOCK COAT CORNER COTTAGE COUNTRY CUP DAUGHTER DOCTOR DOG DOOR DREAM FARM
FARMER FATHER FENCE FIELD FIRE FISH FLOWER FOREST FRIEND GARAGE GARDEN GATE GIRL
GLASS HAT HILL HORSE HOUSE ISLAND JOURNEY KETTLE KING KITCHEN LADDER LADY
LAKE LAMP LETTER LIBRARY MARKET MEADOW MERCHANT MESSAGE MILL MIRROR MORNING
MOTHER MOUNTAIN NEIGHBOUR NEWSPAPER OCEAN OFFICE ORCHARD PAINTER PAPER
PARCEL PATH PENCIL PICTURE PILLOW POCKET POND QUEEN RIVER ROAD ROOF ROOM
SAILOR SCHOOL SHADOW SHEEP SHIP SHOP SHORE SISTER SOLDIER SONG STAIRCASE
STATION STONE STORM STORY STRANGER STREET SUMMER TABLE TEACHER TOWER TOWN
TRAIN TREASURE TREE VALLEY VILLAGE WAGON WALL WATCH WINDOW WINTER WOMAN WORKER
""".split()
ADJECTIVES = """
BIG BLACK BRIGHT BROKEN BROWN BUSY CALM CHEERFUL CLEAN CLEVER COLD CROOKED
DARK DEEP DUSTY EMPTY FAMOUS FRIENDLY FULL GENTLE GOLDEN GREEN GREY HAPPY
HEAVY HIDDEN HOLLOW HUGE KIND LARGE LITTLE LONELY LONG LOUD LOVELY NARROW
NEW NOISY OLD PALE PLEASANT POOR PRETTY PROUD QUIET RED RICH ROUND SHARP
SILENT SIMPLE SLOW SMALL SOFT STRANGE STRONG SWEET TALL TIRED WARM WEALTHY
WET WHITE WIDE WILD WOODEN YELLOW YOUNG
""".split()
TRANSITIVE_VERBS = """
ADMIRED BORROWED BROUGHT BUILT CARRIED CLEANED CLOSED DREW FILLED FOLLOWED
FOUND GATHERED HELD KEPT LEFT LIFTED LOST MADE MENDED MISSED NOTICED OPENED
PAINTED PASSED PUSHED REACHED REMEMBERED SAW SHOWED SOLD TOOK TOUCHED
VISITED WANTED WASHED WATCHED
""".split()
INTRANSITIVE_VERBS = """
ARRIVED CAME LAUGHED LISTENED LIVED PAUSED RAN RESTED RETURNED SANG SAT
SLEPT SMILED SPOKE STAYED STOOD STOPPED TRAVELLED TURNED WAITED WALKED
WANDERED WENT WORKED
""".split()
PREPOSITIONS = """
ACROSS AROUND AT BEHIND BESIDE BY FROM IN INTO NEAR ON OVER THROUGH TOWARD
UNDER WITH
""".split()
ADVERBS = """
AGAIN ALONE CAREFULLY EARLY GENTLY LATE QUICKLY QUIETLY SLOWLY SOON
SUDDENLY TODAY TOGETHER USUALLY YESTERDAY
""".split()
OPENERS = [
    "IN THE MORNING", "AFTER DINNER", "ONE DAY", "LAST NIGHT", "AT LAST",
    "FOR A WHILE", "EARLY IN THE SPRING", "LATER THAT EVENING", "THE NEXT DAY",
    "AFTER A WHILE", "BEFORE NOON", "ONCE AGAIN", "AS USUAL",
]
CONJUNCTIONS = "AND AND BUT WHILE BECAUSE WHEN BEFORE AFTER SO".split()


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a flite voice plus deterministic modifications."""

    speaker_id: int
    chapter_ids: tuple[int, ...]
    voice: str
    warp: float
    stretch: float
    tilt: float
    peak_db: float


@dataclasses.dataclass(frozen=True)
class Task:
    """One utterance to synthesize."""

    utt_id: str
    speaker: Speaker
    chapter_id: int
    text: str
    flac_path: str


@dataclasses.dataclass(frozen=True)
class Result:
    """What a worker returns for one utterance."""

    utt_id: str
    labels: tuple[int, ...]
    num_samples: int
    unknown_phones: dict[str, int]


class ToolError(Exception):
    """A user-facing error with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def noun_phrase(rng: np.random.Generator) -> list[str]:
    """Return a determiner, optional adjective and noun."""
    words = [str(rng.choice(DETERMINERS))]
    if rng.random() < 0.5:
        words.append(str(rng.choice(ADJECTIVES)))
    words.append(str(rng.choice(NOUNS)))
    if words[0] == "A" and words[1][0] in "AEIOU":
        words[0] = "AN"
    return words


def subject(rng: np.random.Generator) -> list[str]:
    """Return a pronoun, a name or a noun phrase."""
    draw = rng.random()
    if draw < 0.3:
        return [str(rng.choice(PRONOUNS))]
    if draw < 0.5:
        return [str(rng.choice(NAMES))]
    return noun_phrase(rng)


def clause(rng: np.random.Generator) -> list[str]:
    """Return subject, verb phrase, optional prepositional phrase and adverb."""
    words = subject(rng)
    if rng.random() < 0.55:
        words += [str(rng.choice(TRANSITIVE_VERBS)), *noun_phrase(rng)]
    else:
        words.append(str(rng.choice(INTRANSITIVE_VERBS)))
    if rng.random() < 0.6:
        words += [str(rng.choice(PREPOSITIONS)), *noun_phrase(rng)]
    if rng.random() < 0.3:
        words.append(str(rng.choice(ADVERBS)))
    return words


def make_sentence(rng: np.random.Generator) -> tuple[str, str]:
    """Draw one sentence of MIN_WORDS to MAX_WORDS words.

    Returns:
        The upper-case transcript (no punctuation) and the text given to
        flite (lower case, with commas at phrase boundaries and a full stop).
    """
    while True:
        parts = []
        if rng.random() < 0.2:
            parts.append(str(rng.choice(OPENERS)).split())
        parts.append(clause(rng))
        if rng.random() < 0.45:
            parts.append([str(rng.choice(CONJUNCTIONS)), *clause(rng)])
        words = [word for part in parts for word in part]
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            break
    transcript = " ".join(words)
    spoken = ", ".join(" ".join(part) for part in parts).lower() + "."
    return transcript, spoken


def check_tools() -> list[str]:
    """Check that flite and sox run; return the flite voices available."""
    for tool in ("flite", "sox"):
        if shutil.which(tool) is None:
            raise ToolError(f"error: '{tool}' not found on PATH; {INSTALL_HINT}")
    try:
        listing = subprocess.run(
            ["flite", "-lv"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise ToolError(f"error: 'flite -lv' failed ({error}); {INSTALL_HINT}") from error
    return listing.split(":", 1)[-1].split()


def flite_version() -> str:
    """Return flite's version line."""
    output = subprocess.run(
        ["flite", "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"version:\s*(\S+)", output)
    return match.group(1) if match else "unknown version"


def parse_segments(output: str, utt_id: str) -> tuple[list[str], np.ndarray]:
    """Parse flite ``-psdur`` output (``phone:end_time`` tokens).

    Raises:
        ToolError: if no segments are found or the end times decrease.
    """
    phones, ends = [], []
    for token in output.split():
        match = re.fullmatch(r"([A-Za-z#_]+[0-9]?):([0-9]*\.?[0-9]+)", token)
        if match is None:
            continue
        phones.append(match.group(1).lower())
        ends.append(float(match.group(2)))
    if not phones:
        raise ToolError(f"error: flite printed no phone segments for {utt_id}")
    ends_array = np.asarray(ends)
    if np.any(np.diff(ends_array) < 0):
        raise ToolError(f"error: flite phone end times decrease for {utt_id}")
    return phones, ends_array


def map_phone(phone: str) -> str | None:
    """Map a flite phone to the 41-class inventory; None means unknown."""
    if phone in FLITE_PHONE_MAP:
        return FLITE_PHONE_MAP[phone]
    upper = re.sub(r"[0-9]$", "", phone).upper()
    return upper if upper in PHONE_INDEX else None


def frame_labels(
    phones: list[str], ends: np.ndarray, num_samples: int
) -> tuple[list[int], dict[str, int]]:
    """Label each 10 ms frame with the phone covering its centre.

    Frames whose centre lies after the last segment end (flite's diphone
    voice sometimes truncates the final pause) are labelled SIL.
    """
    unknown: dict[str, int] = collections.Counter()
    indices = []
    for phone in phones:
        mapped = map_phone(phone)
        if mapped is None:
            unknown[phone] += 1
            mapped = "SPN"
        indices.append(PHONE_INDEX[mapped])
    indices.append(PHONE_INDEX["SIL"])
    num_frames = num_samples // FRAME_SHIFT
    centres = (np.arange(num_frames) * FRAME_SHIFT + FRAME_SHIFT // 2) / SAMPLE_RATE
    segment = np.searchsorted(ends, centres, side="right")
    labels = np.asarray(indices)[segment]
    return [int(label) for label in labels], dict(unknown)


def synthesize(task: Task) -> Result:
    """Run flite and sox for one utterance, write its FLAC and label it."""
    speaker = task.speaker
    with tempfile.TemporaryDirectory(prefix="make_corpus_") as tmp:
        raw = os.path.join(tmp, "raw.wav")
        warped = os.path.join(tmp, "warped.wav")
        command = [
            "flite", "-voice", speaker.voice,
            "--setf", f"duration_stretch={speaker.stretch:.4f}",
            "-psdur", "-t", task.text, "-o", raw,
        ]
        flite = subprocess.run(command, capture_output=True, text=True, check=False)
        if flite.returncode != 0 or not os.path.exists(raw):
            raise ToolError(
                f"error: flite failed for {task.utt_id}: {flite.stderr.strip()}"
            )
        phones, ends = parse_segments(flite.stdout, task.utt_id)
        sox = subprocess.run(
            [
                "sox", "-D", raw, "-e", "floating-point", "-b", "32", warped,
                "speed", f"{speaker.warp:.6f}", "rate", "-v", str(SAMPLE_RATE),
            ],
            capture_output=True, text=True, check=False,
        )
        if sox.returncode != 0:
            raise ToolError(f"error: sox failed for {task.utt_id}: {sox.stderr.strip()}")
        raw_info = sf.info(raw)
        audio, rate = sf.read(warped, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        raise ToolError(f"error: sox produced {rate} Hz audio for {task.utt_id}")
    time_scale = (len(audio) / SAMPLE_RATE) / (raw_info.frames / raw_info.samplerate)
    tilted = audio.copy()
    tilted[1:] -= speaker.tilt * audio[:-1]
    peak = float(np.max(np.abs(tilted))) or 1.0
    tilted *= 10.0 ** (speaker.peak_db / 20.0) / peak
    labels, unknown = frame_labels(phones, ends * time_scale, len(tilted))
    flac_path = Path(task.flac_path)
    tmp_flac = flac_path.with_name(flac_path.name + ".tmp")
    sf.write(tmp_flac, tilted, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp_flac, flac_path)
    return Result(task.utt_id, tuple(labels), len(tilted), unknown)


def make_speakers(
    rng: np.random.Generator, num_speakers: int, voices: list[str], num_chapters: int
) -> list[Speaker]:
    """Derive speakers from voices; warps are stratified within each voice."""
    voice_of = [voices[k % len(voices)] for k in range(num_speakers)]
    drawn_ids = rng.choice(np.arange(100, 9000), num_speakers, replace=False)
    speaker_ids = sorted(int(i) for i in drawn_ids)
    chapter_pool = rng.choice(np.arange(10000, 300000), num_speakers * num_chapters, replace=False)
    warps = [0.0] * num_speakers
    for voice in voices:
        members = [k for k in range(num_speakers) if voice_of[k] == voice]
        order = rng.permutation(len(members))
        width = (WARP_RANGE[1] - WARP_RANGE[0]) / max(len(members), 1)
        for member, stratum in zip(members, order):
            low = WARP_RANGE[0] + stratum * width
            warps[member] = float(rng.uniform(low, low + width))
    speakers = []
    for k in range(num_speakers):
        chapters = chapter_pool[k * num_chapters:(k + 1) * num_chapters]
        speakers.append(
            Speaker(
                speaker_id=speaker_ids[k],
                chapter_ids=tuple(sorted(int(c) for c in chapters)),
                voice=voice_of[k],
                warp=round(warps[k], 4),
                stretch=round(float(rng.uniform(*STRETCH_RANGE)), 4),
                tilt=round(float(rng.uniform(*TILT_RANGE)), 4),
                peak_db=round(float(rng.uniform(*PEAK_DB_RANGE)), 2),
            )
        )
    return speakers


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file, then os.replace)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prepare_output(out: Path, subset: str, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless overwriting our own outputs."""
    ours = [
        out / subset, out / "converted_aligned_phones.txt", out / "phones.txt",
        out / "train_split.txt", out / "test_split.txt", out / "README.md",
        out / "channel.tsv",
    ]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ToolError(
                f"error: output directory {out} exists and is not empty; "
                "choose another --out or pass --overwrite",
                status=2,
            )
        for path in [*ours, *out.glob(".clean-*")]:  # .clean-*: a killed --channel vary run
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def split_ids(
    rng: np.random.Generator, ids_by_speaker: dict[int, list[str]], train_fraction: float
) -> tuple[list[str], list[str]]:
    """Split each speaker's utterances; every speaker lands in both splits."""
    train, test = [], []
    for speaker_id in sorted(ids_by_speaker):
        ids = sorted(ids_by_speaker[speaker_id])
        num_train = min(max(round(train_fraction * len(ids)), 1), len(ids) - 1)
        order = rng.permutation(len(ids))
        train += [ids[i] for i in order[:num_train]]
        test += [ids[i] for i in order[num_train:]]
    return sorted(train), sorted(test)


def build_readme(
    args: argparse.Namespace, speakers: list[Speaker], results: list[Result],
    num_train: int, num_test: int, unknown: dict[str, int],
) -> str:
    """Describe how the corpus was made."""
    total_seconds = sum(r.num_samples for r in results) / SAMPLE_RATE
    arguments = [argument for argument in sys.argv[1:] if argument != "--overwrite"]
    command = "python tools/make_corpus.py " + shlex.join(arguments)
    rows = "\n".join(
        f"| {s.speaker_id} | {s.voice} | {s.warp:.3f} | {s.stretch:.3f} | "
        f"{s.tilt:+.3f} | {s.peak_db:.1f} | {' '.join(map(str, s.chapter_ids))} |"
        for s in speakers
    )
    unknown_text = ", ".join(f"{p} x{n}" for p, n in sorted(unknown.items())) or "none"
    return f"""# Synthetic LibriSpeech-layout corpus

Made offline by `tools/make_corpus.py` with flite `{flite_version()}` and sox:

```
{command}
```

- subset: `{args.subset}`
- speakers: {len(speakers)}; utterances: {len(results)}
- splits (within each speaker): {num_train} in `train_split.txt`, {num_test} in `test_split.txt`
- total audio: {total_seconds:.1f} s ({total_seconds / 60:.2f} min), mono 16 kHz 16-bit FLAC
- phone labels: `converted_aligned_phones.txt`, one label per 10 ms frame
  (`num_samples // 160` labels; frame i gets the phone at its centre), classes in
  `phones.txt` (SIL = 0, the 39 ARPAbet phones alphabetically, SPN = 40). flite's `pau`
  maps to SIL, `ax` to AH; this numbering is this tool's own, not the (unnamed) class
  numbering of the CPC LibriSpeech release
- flite phones mapped to SPN: {unknown_text}

Sentences are random English-looking word sequences (seed {args.seed}). Each speaker is a
flite voice with a duration stretch, a sox speed/pitch warp, a first-order spectral tilt
(`y[n] = x[n] - tilt * x[n-1]`) and a peak level:

| speaker | voice | warp | stretch | tilt | peak dB | chapters |
|---|---|---|---|---|---|---|
{rows}
"""


def check_args(args: argparse.Namespace) -> tuple[list[str], channel.ChannelConfig | None]:
    """Refuse bad arguments before anything is written.

    Returns:
        The available voices, and the channel config (None for ``--channel none``).
    """
    available = check_tools()
    voices = [v for v in args.voices.split(",") if v in available]
    skipped = [v for v in args.voices.split(",") if v not in available]
    if skipped:
        print(
            f"warning: flite voices not available, skipped: {', '.join(skipped)}",
            file=sys.stderr,
        )
    if not voices:
        raise ToolError(f"error: none of the voices {args.voices} is available; {INSTALL_HINT}")
    if args.utterances < 2:
        raise ToolError(
            "error: --utterances must be at least 2 so every speaker is in both splits", 2
        )
    if args.speakers < 1:
        raise ToolError("error: --speakers must be at least 1", 2)
    if not 0.0 < args.train_fraction < 1.0:
        raise ToolError("error: --train-fraction must be between 0 and 1", 2)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.subset):
        raise ToolError(f"error: bad --subset name {args.subset!r}", 2)
    if args.channel == "none":
        return voices, None
    try:
        return voices, channel.config_from_args(args)
    except ValueError as error:
        raise ToolError(f"error: {error}", 2) from None


def plan_tasks(
    rng: np.random.Generator, args: argparse.Namespace, speakers: list[Speaker], out: Path
) -> tuple[list[Task], dict[Path, list[str]], dict[int, list[str]]]:
    """Draw every sentence and name every file; returns tasks, transcripts, ids by speaker."""
    num_chapters = len(speakers[0].chapter_ids)
    tasks, transcripts = [], collections.defaultdict(list)
    ids_by_speaker = collections.defaultdict(list)
    for speaker in speakers:
        next_utt: collections.Counter[int] = collections.Counter()
        for number in range(args.utterances):
            chapter = speaker.chapter_ids[number * num_chapters // args.utterances]
            utt = next_utt[chapter]
            next_utt[chapter] += 1
            utt_id = f"{speaker.speaker_id}-{chapter}-{utt:04d}"
            transcript, spoken = make_sentence(rng)
            directory = out / args.subset / str(speaker.speaker_id) / str(chapter)
            directory.mkdir(parents=True, exist_ok=True)
            tasks.append(Task(utt_id, speaker, chapter, spoken, str(directory / f"{utt_id}.flac")))
            transcripts[directory / f"{speaker.speaker_id}-{chapter}.trans.txt"].append(
                f"{utt_id} {transcript}"
            )
            ids_by_speaker[speaker.speaker_id].append(utt_id)
    return tasks, transcripts, ids_by_speaker


def synthesize_all(pool: multiprocessing.pool.Pool, tasks: list[Task]) -> list[Result]:
    """Synthesize every task in the pool, in task order."""
    results = []
    for count, result in enumerate(pool.imap(synthesize, tasks, chunksize=4), start=1):
        results.append(result)
        if count % 10 == 0 or count == len(tasks):
            print(f"synthesized {count}/{len(tasks)} utterances", file=sys.stderr, flush=True)
    return results


def build_corpus(args: argparse.Namespace) -> None:
    """Synthesize the whole corpus described by the parsed arguments."""
    voices, channel_config = check_args(args)
    out = Path(args.out)
    prepare_output(out, args.subset, args.overwrite)

    rng = np.random.default_rng(args.seed)
    num_chapters = max(1, min(args.chapters, args.utterances))
    speakers = make_speakers(rng, args.speakers, voices, num_chapters)
    tasks, transcripts, ids_by_speaker = plan_tasks(rng, args, speakers, out)
    channel_seed = args.seed if args.channel_seed is None else args.channel_seed
    draws, limiters = [], []
    with contextlib.ExitStack() as stack:
        if channel_config is not None:
            # Clean audio first, into a temporary folder: babble mixes other utterances' clean audio.
            clean_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".clean-", dir=out)))
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(max(1, args.jobs)))
        if channel_config is None:
            results = synthesize_all(pool, tasks)
        else:
            clean = {task.utt_id: str(clean_dir / f"{task.utt_id}.flac") for task in tasks}
            results = synthesize_all(pool, [dataclasses.replace(t, flac_path=clean[t.utt_id]) for t in tasks])
            final = {task.utt_id: task.flac_path for task in tasks}
            lengths = {result.utt_id: result.num_samples for result in results}
            draws, limiters = channel.vary(pool, lengths, clean, final, channel_seed, channel_config)

    unknown: collections.Counter[str] = collections.Counter()
    for result in results:
        unknown.update(result.unknown_phones)
    if unknown:
        print(f"warning: flite phones mapped to SPN: {dict(unknown)}", file=sys.stderr)

    for path, lines in transcripts.items():
        write_text(path, "\n".join(lines) + "\n")
    write_text(
        out / "converted_aligned_phones.txt",
        "".join(
            f"{r.utt_id} {' '.join(map(str, r.labels))}\n"
            for r in sorted(results, key=lambda r: r.utt_id)
        ),
    )
    write_text(out / "phones.txt", "".join(f"{i} {p}\n" for i, p in enumerate(PHONES)))
    train, test = split_ids(rng, ids_by_speaker, args.train_fraction)
    write_text(out / "train_split.txt", "\n".join(train) + "\n")
    write_text(out / "test_split.txt", "\n".join(test) + "\n")
    readme = build_readme(args, speakers, results, len(train), len(test), unknown)
    if channel_config is not None:
        write_text(out / "channel.tsv", channel.sidecar_text(draws, limiters))
        readme += channel.describe(channel_config, channel_seed, draws, limiters)
    write_text(out / "README.md", readme)
    total = sum(r.num_samples for r in results) / SAMPLE_RATE
    print(
        f"wrote {len(results)} utterances from {len(speakers)} speakers "
        f"({total:.1f} s of audio) to {out}",
        file=sys.stderr,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--speakers", type=int, default=8, help="number of speakers")
    parser.add_argument("--utterances", type=int, default=14, help="utterances per speaker")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--subset", default="train-clean-100", help="subset directory name")
    parser.add_argument("--train-fraction", type=float, default=0.8,
                        help="fraction of each speaker's utterances in train_split.txt")
    parser.add_argument("--chapters", type=int, default=2, help="chapters per speaker")
    parser.add_argument("--voices", default=",".join(DEFAULT_VOICES),
                        help="comma-separated flite voices (unavailable ones are skipped)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="parallel synthesis processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this tool's outputs in an existing --out directory")
    channel.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        build_corpus(args)
    except ToolError as error:
        print(error, file=sys.stderr)
        return error.status
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end test of tools/make_corpus.py (needs Debian's flite and sox)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_corpus.py"
SUBSET = "train-clean-100"
ARGS = ["--speakers", "2", "--utterances", "2", "--seed", "3"]

pytestmark = pytest.mark.skipif(
    shutil.which("flite") is None or shutil.which("sox") is None,
    reason="flite and sox are needed (apt-get install flite sox)",
)


def run_tool(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), "--out", str(out), *ARGS, *extra],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "out"
    result = run_tool(out)
    assert result.returncode == 0, result.stderr
    return out


def flac_files(corpus: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted((corpus / SUBSET).glob("*/*/*.flac"))}


def test_layout_and_names(corpus):
    flacs = flac_files(corpus)
    assert len(flacs) == 4
    speakers = set()
    for utt_id, path in flacs.items():
        match = re.fullmatch(r"(\d+)-(\d+)-(\d{4})", utt_id)
        assert match, utt_id
        speaker, chapter, _ = match.groups()
        speakers.add(speaker)
        assert path.parent == corpus / SUBSET / speaker / chapter
        assert (path.parent / f"{speaker}-{chapter}.trans.txt").is_file()
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (
            16000, 1, "FLAC", "PCM_16"
        )
    assert len(speakers) == 2
    for name in ("README.md", "phones.txt", "converted_aligned_phones.txt"):
        assert (corpus / name).is_file()
    assert not list(corpus.rglob("*.tmp"))


def test_transcripts(corpus):
    flacs = flac_files(corpus)
    lines = {}
    for trans in (corpus / SUBSET).glob("*/*/*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            assert trans.name == "-".join(utt_id.split("-")[:2]) + ".trans.txt"
            lines[utt_id] = text
    assert set(lines) == set(flacs)
    for text in lines.values():
        assert re.fullmatch(r"[A-Z' ]+", text), text
        assert 6 <= len(text.split()) <= 14


def test_inventory(corpus):
    phones = load_phone_inventory(corpus / "phones.txt")
    assert len(phones) == 41
    assert phones[0] == "SIL" and phones[-1] == "SPN"
    assert phones[1:-1] == sorted(phones[1:-1])


def test_alignments_match_audio(corpus):
    alignments = load_alignments(corpus / "converted_aligned_phones.txt", num_classes=41)
    flacs = flac_files(corpus)
    assert set(alignments) == set(flacs)
    for utt_id, path in flacs.items():
        labels = alignments[utt_id]
        assert len(labels) == sf.info(str(path)).frames // 160
        assert labels[0] == 0 and labels[-1] == 0
        assert len(set(labels.tolist())) > 5


def test_splits(corpus):
    train = load_split(corpus / "train_split.txt")
    test = load_split(corpus / "test_split.txt")
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(flac_files(corpus))
    speakers = [{utt_id.split("-")[0] for utt_id in ids} for ids in (train, test)]
    assert speakers[0] == speakers[1] == {u.split("-")[0] for u in flac_files(corpus)}


def test_silence_labels_follow_energy(corpus):
    """Frames labelled SIL are quiet and phone frames are loud: the timing is real."""
    alignments = load_alignments(corpus / "converted_aligned_phones.txt")
    for utt_id, path in flac_files(corpus).items():
        audio, _ = sf.read(str(path))
        labels = alignments[utt_id]
        frames = audio[: len(labels) * 160].reshape(len(labels), 160)
        rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-9
        median = np.median(rms)
        lead = int(np.argmax(labels != 0))
        assert lead >= 3
        assert rms[:lead].max() < 0.1 * median, utt_id
        speech = labels != 0
        assert np.median(rms[speech]) > 10 * np.median(rms[~speech]), utt_id
        onset = int(np.argmax(rms > 0.1 * median))
        assert abs(onset - lead) <= 10, (utt_id, onset, lead)


def test_deterministic_and_refuses_existing(corpus, tmp_path):
    result = run_tool(corpus)
    assert result.returncode == 2
    assert "--overwrite" in result.stderr
    again = tmp_path / "again"
    assert run_tool(again).returncode == 0
    for name in ("converted_aligned_phones.txt", "train_split.txt", "test_split.txt"):
        assert (again / name).read_text() == (corpus / name).read_text()
    for utt_id, path in flac_files(corpus).items():
        assert flac_files(again)[utt_id].read_bytes() == path.read_bytes()
    result = run_tool(again, "--overwrite")
    assert result.returncode == 0, result.stderr

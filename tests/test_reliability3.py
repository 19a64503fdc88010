"""Reliability, third round: link loops in a corpus, sweeps of temporary files, real full and read-only disks,
impossible sample rates.

The full-disk and read-only tests run on a real small filesystem: a tmpfs
mounted for the test (root only; unmounted at teardown), so the kernel itself
refuses the writes, with numpy's short write and TensorBoard's writer as they
really fail. Where no tmpfs can be mounted they are skipped with the reason;
the file-size-limit test (``ulimit -f``) runs everywhere.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audiossl.cli import main
from audiossl.data.audio import AudioError, read_audio
from audiossl.data.corpus import CorpusError, load_corpus, read_manifest
from audiossl.extract import FeatureSet
from audiossl.units.fit import FitSettings, fit_units
from audiossl.units.kmeans import KMeansSettings
from audiossl.utils.atomic import DiskFullError, atomic_write, remove_stale_temps

from conftest import package_env, synth_utterance

pytestmark = pytest.mark.usefixtures("one_thread")
RATE = 16000


def write_audio(path: Path, seconds: float = 0.3, seed: int = 0, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), synth_utterance(np.random.default_rng(seed), int(seconds * RATE)), rate,
                    subtype="PCM_16")
    return path


def one_error_line(capsys) -> str:
    """The one line on stderr, once progress bars (``prepare`` has no ``--no-progress``) are set aside."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def extract_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--baseline", "mfcc", "--data", str(data), "--out", str(out), "--num-workers", "0",
            "--device", "cpu", "--no-progress", *extra]


def exited_pid() -> int:
    """The pid of a process that has ended: what a ``kill -9`` leaves in a temporary file's name."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted on ``folder`` for the block; skips the test where none can be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A real 3 MB filesystem."""
    with tmpfs(tmp_path / "disk", "size=3m") as folder:
        yield folder


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder nothing can be written in: a read-only tmpfs for root (mode bits do not stop root), else 0o500."""
    folder = tmp_path / "read_only"
    if os.geteuid() == 0:
        with tmpfs(folder, "ro,size=1m"):
            yield folder
        return
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("a folder of mode 0o500 is still writable here")
        yield folder
    finally:
        folder.chmod(0o700)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes."""
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - leave)))


# ---- 1. a link loop in a corpus folder


def test_a_folder_link_loop_counts_each_file_once(tmp_path, capsys):
    corpus = tmp_path / "L"
    for speaker in ("spkA", "spkB"):
        for i in range(3):
            write_audio(corpus / speaker / f"u{i}.flac", seed=len(speaker) + i)
    os.symlink(".", corpus / "spkA" / "again")  # a loop: spkA/again/again/... is spkA
    manifest = tmp_path / "L.tsv"
    assert main(["prepare", "--data", str(corpus), "--out", str(manifest)]) == 0
    assert "6 utterances, 2 speakers" in capsys.readouterr().out  # not 126 utterances, 3 speakers
    os.symlink("../spkA/u0.flac", corpus / "spkB" / "link.flac")  # a second name for one file
    elsewhere = tmp_path / "elsewhere" / "spkC"
    write_audio(elsewhere / "c0.flac", seed=9)
    os.symlink(elsewhere, corpus / "spkC")  # a folder kept on another disk: followed, once
    os.symlink(elsewhere, corpus / "spkA" / "spkC_again")
    assert main(["prepare", "--data", str(corpus), "--out", str(manifest)]) == 0
    printed = capsys.readouterr().out
    assert "7 utterances, 3 speakers" in printed
    assert f"skipped {corpus / 'spkA' / 'again'} -> {corpus / 'spkA'}: a link to a folder scanned already" in printed
    assert f"skipped {corpus / 'spkA' / 'spkC_again'} -> {elsewhere}" in printed
    assert f"{corpus / 'spkB' / 'link.flac'} (the same file as {corpus / 'spkA' / 'u0.flac'})" in printed
    utterances = read_manifest(manifest)
    assert sorted(u.id for u in utterances) == ["spkA/u0", "spkA/u1", "spkA/u2", "spkB/u0", "spkB/u1", "spkB/u2",
                                                "spkC/c0"]
    assert len({u.path for u in utterances}) == 7
    # the scan training caches (EXP_DIR/manifest.tsv) walks the same way, the first time and when it is reused
    for _ in range(2):
        cached, _ = load_corpus(corpus, cache=tmp_path / "exp" / "manifest.tsv", progress=False)
        assert sorted(u.id for u in cached) == sorted(u.id for u in utterances)


def test_a_link_loop_in_the_librispeech_layout_is_not_a_duplicate_id(tiny_corpus, tmp_path, capsys):
    os.symlink(".", tiny_corpus / "train-clean-100" / "19" / "191" / "again")
    os.symlink("..", tiny_corpus / "train-clean-100" / "26" / "up")  # up to train-clean-100: a loop too
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(tmp_path / "c.tsv")]) == 0
    printed = capsys.readouterr().out
    assert "12 utterances, 3 speakers" in printed and printed.count("a link to a folder scanned already") == 2
    out = tmp_path / "features"
    assert main(extract_args(tiny_corpus, out)) == 0
    assert len(FeatureSet(out / "mfcc").num_frames) == 12


# ---- 2. units assign sweeps only what it owns, only what is provably dead


def test_units_assign_leaves_the_temporary_files_of_other_runs_below_out(mfcc_features, tmp_path):
    units = tmp_path / "units"
    fit_units(mfcc_features, units, "mfcc", FitSettings(KMeansSettings(k=4, batch_size=256), max_frames=400),
              progress=False)
    out, dead = tmp_path / "P", exited_pid()
    live = subprocess.Popen(["sleep", "300"])  # a writer still at work, as a training run in P/run
    try:
        kept = [out / "run" / f".checkpoint.pt.tmp{live.pid}",  # another run's folder below --out: live ...
                out / "run" / f".checkpoint.pt.tmp{dead}",  # ... or dead, not this command's to sweep
                out / "quantized_outputs" / f".x.txt.tmp{live.pid}"]  # its own tree, but the writer lives
        swept = [out / f".assign.json.tmp{dead}", out / "quantized_outputs" / "19" / f".x.txt.tmp{dead}",
                 out / "onehot" / f".x.npy.tmp{dead}"]
        for path in kept + swept:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half written")
        assert main(["units", "assign", "--units", str(units), "--features", str(mfcc_features), "--out", str(out),
                     "--device", "cpu", "--no-progress"]) == 0
        assert all(path.exists() for path in kept), [p for p in kept if not p.exists()]
        assert not any(path.exists() for path in swept)
    finally:
        live.kill()
        live.wait()


def test_a_recursive_sweep_removes_only_dead_files_outside_other_runs_folders(tmp_path):
    dead = exited_pid()
    own = tmp_path / "a" / f".f.tmp{dead}"
    locked = tmp_path / "run" / f".checkpoint.pt.tmp{dead}"  # a folder with its own .lock: another run's
    mine = tmp_path / f".g.tmp{os.getpid()}"
    alive = tmp_path / f".h.tmp{os.getppid()}"
    for path in (own, locked, mine, alive):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "run" / ".lock").write_text("")
    assert sorted(remove_stale_temps(tmp_path, recursive=True)) == sorted([own, mine])
    assert locked.exists() and alive.exists()


# ---- 3. a real full disk while numpy writes


def test_a_numpy_short_write_on_a_full_filesystem_is_a_disk_full_error(small_disk):
    target = small_disk / "x.npy"
    atomic_write(target, lambda f: np.save(f, np.arange(10, dtype=np.float32)))
    fill(small_disk, leave=20 * 1024)
    with pytest.raises(DiskFullError) as error:  # numpy: "21056 requested and 5088 written", no errno
        atomic_write(target, lambda f: np.save(f, np.zeros(21056, dtype=np.float32)))
    assert error.value.strerror == f"no space left on device writing {target}; the previous file is intact"
    assert np.array_equal(np.load(target), np.arange(10, dtype=np.float32))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "x.npy"]


def test_a_numpy_short_write_over_the_file_size_limit_is_a_disk_full_error(tmp_path):
    script = ("import resource, sys; import numpy as np\n"
              "from audiossl.utils.atomic import DiskFullError, atomic_write\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
              "try:\n"
              "    atomic_write(sys.argv[1], lambda f: np.save(f, np.zeros(50000, np.float32)))\n"
              "except DiskFullError as e:\n"
              "    print(e.strerror)\n")
    target = tmp_path / "x.npy"
    done = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                          env=package_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"file too large for the file-size limit (ulimit -f) or the filesystem writing "
                                   f"{target}; no file was there before")
    assert list(tmp_path.iterdir()) == []


def test_extract_onto_a_full_filesystem_is_one_line_and_keeps_the_arrays_written(tiny_corpus, small_disk, capsys):
    fill(small_disk, leave=64 * 1024)  # the folder's bookkeeping and two of the 16 KB arrays
    out = small_disk / "feat"
    assert main(extract_args(tiny_corpus, out)) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"audiossl extract: error: no space left on device writing {out / 'mfcc'}")
    assert line.endswith(".npy; no file was there before")
    arrays = sorted((out / "mfcc").rglob("*.npy"))
    assert arrays and all(np.load(path).shape[1] == 39 for path in arrays)  # whole, readable
    assert not [p for p in out.rglob(".*") if p.name != ".lock"]
    (small_disk / "filler").unlink()
    assert main(extract_args(tiny_corpus, out)) == 0  # room again: the same command finishes the job
    assert f"{len(arrays)} array set(s) reused, {12 - len(arrays)} added" in capsys.readouterr().out


# ---- 6. sample rates no audio has


def test_a_manifest_row_with_sample_rate_zero_is_refused_naming_the_file(tiny_corpus, tiny_overrides, tmp_path,
                                                                         capsys):
    audio = sorted(tiny_corpus.rglob("*.flac"))
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\tpath\tspeaker\tnum_samples\tsample_rate\n"
                        f"a\t{audio[0]}\t19\t16000\t16000\nb\t{audio[1]}\t19\t16000\t0\n")
    with pytest.raises(CorpusError, match=rf"m.tsv:3: {audio[1]}: sample rate 0 Hz is outside 1000\.\.768000 Hz"):
        read_manifest(manifest)
    assert main(extract_args(manifest, tmp_path / "f")) == 2
    assert "m.tsv:3" in one_error_line(capsys)
    assert main(["train", "--data", str(manifest), "--exp-dir", str(tmp_path / "exp"), "--no-progress",
                 *(f"{k}={v}" for k, v in tiny_overrides.items())]) == 2
    assert "sample rate 0 Hz" in one_error_line(capsys)
    assert not (tmp_path / "exp" / "checkpoint.pt").exists()


def test_a_wav_whose_header_says_1_hz_is_skipped_and_never_resampled(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    good = [write_audio(corpus / "s" / f"good{i}.wav", seed=i) for i in range(2)]
    slow = write_audio(corpus / "s" / "slow.wav", seconds=1.0, rate=1)  # 32 KB that say 4.4 hours
    assert soundfile.info(str(slow)).samplerate == 1
    assert main(["prepare", "--data", str(corpus), "--out", str(tmp_path / "c.tsv")]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {slow}: sample rate 1 Hz is outside 1000..768000 Hz" in printed
    assert "2 utterances, 1 speakers, 0.00 h" in printed
    with pytest.raises(AudioError, match="sample rate 1 Hz is outside"):
        read_audio(slow)
    # a manifest that says 16 kHz for it (the file changed since, or the list lies): skipped when read
    lying = tmp_path / "lying.tsv"
    lying.write_text("id\tpath\tspeaker\tnum_samples\tsample_rate\n"
                     + "".join(f"{p.stem}\t{p}\ts\t{16000 if p == slow else 4800}\t16000\n" for p in [*good, slow]))
    assert main(extract_args(lying, tmp_path / "f")) == 0
    assert "skipped slow:" in capsys.readouterr().err
    assert sorted(FeatureSet(tmp_path / "f" / "mfcc").num_frames) == ["good0", "good1"]


# ---- 7. outputs that cannot be written


@pytest.mark.parametrize("command", ["train", "train into a new folder", "extract", "prepare", "probe"])
def test_a_read_only_output_is_one_line(tiny_corpus, tiny_overrides, read_only, capsys, command):
    corpus, overrides = str(tiny_corpus), [f"{k}={v}" for k, v in tiny_overrides.items()]
    argv = {"train": ["train", "--data", corpus, "--exp-dir", str(read_only), "--no-progress", *overrides],
            "train into a new folder": ["train", "--data", corpus, "--exp-dir", str(read_only / "exp"), *overrides],
            "extract": extract_args(tiny_corpus, read_only / "feat"),
            "prepare": ["prepare", "--data", corpus, "--out", str(read_only / "c.tsv")],
            "probe": ["probe", "speaker", "--baseline", "mfcc", "--data", corpus, "--out", str(read_only / "p"),
                      "--device", "cpu", "--no-progress"]}[command]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"error: cannot use {read_only}" in line
    assert line.endswith(": read-only file system" if os.geteuid() == 0 else ": permission denied")


@pytest.mark.parametrize("command", ["train", "extract", "probe"])
def test_an_output_folder_that_is_a_file_is_one_line(tiny_corpus, tiny_overrides, tmp_path, capsys, command):
    taken = tmp_path / "taken"
    taken.write_text("not a folder\n")
    argv = {"train": ["train", "--data", str(tiny_corpus), "--exp-dir", str(taken),
                      *(f"{k}={v}" for k, v in tiny_overrides.items())],
            "extract": extract_args(tiny_corpus, taken),
            "probe": ["probe", "speaker", "--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(taken),
                      "--device", "cpu", "--no-progress"]}[command]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"cannot use {taken}" in line and ("not a folder" in line or "is a file" in line)
    assert taken.read_text() == "not a folder\n"


def probe_splits(folder: Path) -> list[str]:
    """Three training utterances and one test utterance per speaker of the tiny corpus."""
    train, test = folder / "train.txt", folder / "test.txt"
    ids = [f"{s}-{int(s) * 10 + 1}-{u:04d}" for s in ("19", "26", "103") for u in range(4)]
    train.write_text("".join(i + "\n" for i in ids if not i.endswith("3")))
    test.write_text("".join(i + "\n" for i in ids if i.endswith("3")))
    return ["--train-split", str(train), "--test-split", str(test)]


def test_probe_curves_on_a_full_disk_are_one_line_and_leave_no_temporary_folder(mfcc_features, small_disk, tmp_path,
                                                                              capsys):
    out = small_disk / "probe"
    fill(small_disk, leave=0)
    argv = ["probe", "speaker", "--features", str(mfcc_features), "--layer", "mfcc", "--baselines", "none",
            "epochs=2", *probe_splits(tmp_path), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 1
    assert one_error_line(capsys) == ("audiossl probe: error: no space left on device writing "
                                      f"{out / 'tb'}; no curves were there before")  # no writer-thread traceback
    assert sorted(p.name for p in out.iterdir()) == []


def test_probe_curves_are_read_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from audiossl.probes.runner import write_outputs

    report = {"results": [{"features": "mfcc", "history": {"loss": [2.0, 1.5, 1.25], "accuracy": [0.5, 0.75, 1.0]}}]}
    write_outputs(report, "table", tmp_path)
    write_outputs(report, "table", tmp_path)  # replaced whole, not appended to
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["mfcc/accuracy", "mfcc/loss"]
    assert [(e.step, e.value) for e in events.Scalars("mfcc/loss")] == [(1, 2.0), (2, 1.5), (3, 1.25)]
    assert len(list((tmp_path / "tb").iterdir())) == 1 and not list(tmp_path.glob(".tb*"))

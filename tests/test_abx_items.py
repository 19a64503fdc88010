"""ABX on item files: parsing, the frame cut, writing from alignments, scoring, and zrc-abx2 itself when installed."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from audiossl.cli import main
from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split
from audiossl.probes.abx.item_files import ItemABXSettings, item_file_score, unit_frames
from audiossl.probes.abx.items import (
    ITEM_HEADER,
    ItemFileError,
    find_items,
    frame_spans,
    items_from_alignments,
    read_item_file,
    speaker_from_id,
    write_item_file,
)

from conftest import import_reference
from test_abx import naive_dtw

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


def write_lines(path: Path, lines: list[str], header: str = ITEM_HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_item_file_columns_and_first_appearance_numbering(tmp_path):
    path = write_lines(tmp_path / "x.item", ["u1 0.10 0.20 B A C s2", "u2 0.0 0.05 A B B s1", "",
                                             "u1 0.30 0.41 B A C s1", "u1 0.5 0.6 K B B s2"])
    items = read_item_file(path)
    assert items.file == ["u1", "u2", "u1", "u1"]
    np.testing.assert_allclose(items.onset, [0.1, 0.0, 0.3, 0.5])
    np.testing.assert_allclose(items.offset, [0.2, 0.05, 0.41, 0.6])
    assert items.phones == ["B", "A", "K"] and items.phone.tolist() == [0, 1, 0, 2]
    assert items.contexts == [("A", "C"), ("B", "B")] and items.context.tolist() == [0, 1, 0, 1]
    assert items.speakers == ["s2", "s1"] and items.speaker.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("line, problem", [
    ("u1 0.1 0.2 A B C", "line 3: expected 7 columns"),
    ("u1 0.1 0.2 A B C s1 extra", "line 3: expected 7 columns"),
    ("u1 0.1s 0.2 A B C s1", "line 3: onset and offset must be numbers"),
    ("u1 0.3 0.2 A B C s1", "line 3: onset 0.3 and offset 0.2"),
    ("u1 -0.1 0.2 A B C s1", "line 3: onset -0.1"),
])
def test_malformed_item_lines_are_named_by_file_and_line(tmp_path, line, problem):
    path = write_lines(tmp_path / "bad.item", ["u1 0.0 0.1 A B C s1", line])
    with pytest.raises(ItemFileError, match=f"{path}, {problem}"):
        read_item_file(path)


def test_item_file_without_items_is_refused(tmp_path):
    with pytest.raises(ItemFileError, match="no items after the header"):
        read_item_file(write_lines(tmp_path / "empty.item", []))
    with pytest.raises(ItemFileError, match="cannot read"):
        read_item_file(tmp_path / "missing.item")


def test_frame_cut_rule_on_hand_made_times():
    onset = np.array([0.0, 0.28, 0.125, 0.126, 0.0049, 0.0051, 0.5, 0.3])
    offset = np.array([0.05, 0.36, 0.13, 0.1349, 0.0151, 0.0251, 0.9, 0.3])
    start, end = frame_spans(onset, offset, 100.0, num_frames=70)
    assert start.tolist() == [0, 28, 12, 13, 0, 1, 50, 30]
    assert end.tolist() == [4, 35, 12, 12, 1, 2, 70, 29]  # the 0.5-0.9 item is clipped at 70 frames
    # The reference's own arithmetic, one item at a time: r * t in floating point, not t / 0.01.
    for on, off, s, e in zip(onset, offset, start, end):
        assert s == max(0, math.ceil(100.0 * on - 0.5)) and e == min(70, math.floor(100.0 * off - 0.5))
    # 0.035 / 0.01 = 3.4999999999999996 would give ceil(3.0) = 3; the reference's 100 * 0.035 = 3.5000000000000004.
    assert frame_spans(np.array([0.035]), np.array([0.1]), 100.0)[0].tolist() == [4]


def test_write_items_round_trip(tmp_path):
    labels = {"7-1-0": np.array([0, 0, 1, 1, 1, 2, 2, 0, 3, 0]), "8-2-1": np.array([0, 2, 2, 2, 1, 0])}
    names = ["SIL", "AA", "B", "K"]
    speakers = {u: speaker_from_id(u) for u in labels}
    lines = items_from_alignments(labels, names, speakers)
    path = tmp_path / "out.item"
    write_item_file(path, lines)
    text = path.read_text().splitlines()
    assert text[0] == ITEM_HEADER and text[1] == "7-1-0 0.0200 0.0500 AA SIL B 7"
    items = read_item_file(path)
    expected = find_items(labels, speakers)
    assert len(items) == len(expected) == 5
    assert items.file == [expected.ids[u] for u in expected.utterance]
    assert [items.phones[p] for p in items.phone] == [names[c] for c in expected.centre]
    assert items.contexts == [(names[left], names[right]) for left, right in zip(expected.left, expected.right)]
    assert [items.speakers[s] for s in items.speaker] == ["7", "7", "7", "8", "8"]
    # The reference's cut keeps each run's frames but its last one.
    start, end = frame_spans(items.onset, items.offset, 100.0)
    assert start.tolist() == expected.start.tolist() and end.tolist() == (expected.end - 1).tolist()


def test_cli_writes_items_from_the_demo_alignments(tmp_path, capsys):
    out = tmp_path / "test.item"
    args = ["probe", "abx", "--write-items", str(out), "--alignments", str(DEMO / "converted_aligned_phones.txt"),
            "--phones", str(DEMO / "phones.txt"), "--split", str(DEMO / "test_split.txt")]
    assert main(args) == 0
    ids = load_split(DEMO / "test_split.txt")
    labels = load_alignments(DEMO / "converted_aligned_phones.txt")
    expected = find_items({u: labels[u] for u in ids}, {u: u.split("-")[0] for u in ids})
    items = read_item_file(out)
    assert len(items) == len(expected) and set(items.file) == set(ids) and len(items.speakers) == 8
    assert "SIL" not in items.phones and set(items.phones) <= set(load_phone_inventory(DEMO / "phones.txt"))
    assert main(args[:4] + ["--alignments", str(DEMO / "converted_aligned_phones.txt")]) == 2
    assert "--phones" in capsys.readouterr().err


def toy_items(tmp_path: Path, seed: int, num_speakers: int = 4, per_speaker: int = 3, dim: int = 8,
              seconds: float = 1.9):
    """Random features and an item file over them: 3 phones, 2 contexts, items of 2-6 frames."""
    rng = np.random.default_rng(seed)
    feats, lines = {}, []
    for s, u in itertools.product(range(num_speakers), range(per_speaker)):
        utt = f"{s}-1-{u}"
        feats[utt] = rng.standard_normal((200, dim)).astype(np.float32)
        t = 0.02
        while t < seconds:
            length = rng.integers(2, 7) / 100
            lines.append(f"{utt} {t:.4f} {t + length:.4f} {'ABC'[rng.integers(3)]} {'XY'[rng.integers(2)]} X spk{s}")
            t += length
    rng.shuffle(lines)  # files interleaved: first-appearance order is not file order
    return feats, write_lines(tmp_path / "toy.item", lines)


def naive_item_scores(item_path: Path, feats: dict) -> dict:
    """Every (A, B, X) of every cell, no sampling, averaged as zrc-abx2 does: the definition, by loops."""
    items = read_item_file(item_path)
    pieces = []
    for n, file in enumerate(items.file):
        start, end = frame_spans(items.onset[n:n + 1], items.offset[n:n + 1], 100.0, len(feats[file]))
        x = torch.nn.functional.normalize(torch.from_numpy(feats[file][start[0]:end[0]]), dim=1).numpy()
        pieces.append((x, int(items.phone[n]), int(items.context[n]), int(items.speaker[n])))

    def d(a, x):
        return naive_dtw(np.arccos(np.clip(a @ x.T, -1, 1)) / np.pi)

    def wrong(a, b, x):
        dax, dbx = d(a, x), d(b, x)
        return (dax > dbx) + 0.5 * (dax == dbx)

    def mean_over(cells: dict, levels: int) -> float:
        for _ in range(levels):  # drop the last key element, averaging
            grouped = {}
            for key, value in cells.items():
                grouped.setdefault(key[:-1], []).append(value)
            cells = {k: float(np.mean(v)) for k, v in grouped.items()}
        return float(np.mean(list(cells.values())))

    scores = {}
    for context_mode in ("within", "any"):
        group = {}
        for i, (_, p, c, s) in enumerate(pieces):
            group.setdefault((c if context_mode == "within" else 0, s, p), []).append(i)
        within, across = {}, {}
        for (c, s, pa), ga in group.items():
            for (c2, s2, pb), gb in group.items():
                if (c2, s2) != (c, s) or pb == pa:
                    continue
                if len(ga) > 1:
                    within[(pa, pb, s, c)] = np.mean([wrong(pieces[a][0], pieces[b][0], pieces[x][0])
                                                      for x in ga for a in ga if a != x for b in gb])
                for (c3, sx, px), gx in group.items():
                    if c3 == c and px == pa and sx != s:
                        across[(pa, pb, s, (c, sx))] = np.mean([wrong(pieces[a][0], pieces[b][0], pieces[x][0])
                                                                for x in gx for a in ga for b in gb])
        scores[f"within-{context_mode}"] = mean_over(within, 2)
        scores[f"across-{context_mode}"] = mean_over(across, 2)
    return scores


def test_item_scores_equal_the_definition_without_sampling(tmp_path):
    feats, path = toy_items(tmp_path, seed=0, num_speakers=3, per_speaker=1, seconds=1.0)
    settings = ItemABXSettings(max_size_group=1000, max_x_across=1000)
    got = item_file_score(read_item_file(path), feats.__getitem__, {u: len(f) for u, f in feats.items()}, 100.0,
                          settings)
    expected = naive_item_scores(path, feats)
    for condition, error in expected.items():
        assert got["conditions"][condition]["error"] == pytest.approx(error, abs=1e-9), condition


def test_item_scores_are_zero_on_phone_features_and_chance_on_noise(tmp_path):
    _, path = toy_items(tmp_path, seed=1)
    items = read_item_file(path)
    rng = np.random.default_rng(2)
    perfect = {u: 0.01 * rng.standard_normal((200, 8)).astype(np.float32) for u in set(items.file)}
    for n, file in enumerate(items.file):
        start, end = frame_spans(items.onset[n:n + 1], items.offset[n:n + 1], 100.0)
        perfect[file][start[0]:end[0], items.phone[n]] += 1.0
    frames = {u: 200 for u in perfect}
    clean = item_file_score(items, perfect.__getitem__, frames, 100.0)
    noise = item_file_score(items, lambda u: rng.standard_normal((200, 8)), frames, 100.0)
    assert clean["num_items"] == len(items) and set(clean["conditions"]) == {
        "within-within", "across-within", "within-any", "across-any"}
    for condition, value in clean["conditions"].items():
        assert value["error"] == 0.0 and value["num_cells"] > 0
        assert 0.4 < noise["conditions"][condition]["error"] < 0.6
    again = item_file_score(items, perfect.__getitem__, frames, 100.0, ItemABXSettings(max_size_group=2, seed=5))
    assert again["conditions"]["across-any"]["num_cells"] == clean["conditions"]["across-any"]["num_cells"]


def test_items_without_features_or_frames_are_counted(tmp_path):
    path = write_lines(tmp_path / "x.item", ["a 0.10 0.20 B A C s1", "b 0.10 0.20 B A C s1", "a 0.30 0.305 K A C s1"])
    got = item_file_score(read_item_file(path), lambda u: np.ones((50, 3)), {"a": 50}, 100.0)
    assert got["num_items"] == 1 and got["missing_files"] == ["b"]
    assert got["dropped_items"] == {"no_features": 1, "no_frames": 1}
    assert got["conditions"]["within-within"]["error"] is None


def test_zero_frames_are_far_from_every_other_frame():
    frames = unit_frames(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [-3.0, -4.0]]))
    angle = torch.acos((frames @ frames.T).clamp(-1, 1)) / math.pi
    assert angle[0, 1].item() == 1.0 and angle[0, 3].item() == 1.0 and angle[0, 2].item() == 0.0
    assert angle[1, 3].item() == pytest.approx(1.0) and angle[1, 1].item() == pytest.approx(0.0, abs=1e-3)


def test_cli_scores_an_item_file(tmp_path, capsys):
    items = tmp_path / "test.item"
    assert main(["probe", "abx", "--write-items", str(items), "--alignments",
                 str(DEMO / "converted_aligned_phones.txt"), "--phones", str(DEMO / "phones.txt"), "--split",
                 str(DEMO / "test_split.txt")]) == 0
    out = tmp_path / "abx"
    args = ["probe", "abx", "--baseline", "mfcc", "--data", str(DEMO), "--item-file", str(items), "context_modes=any",
            "--out", str(out), "--no-progress", "--device", "cpu", "--num-workers", "0"]
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    (row,) = report["results"]
    assert row["features"] == "mfcc" and set(row["conditions"]) == {"within-any", "across-any"}
    assert report["settings"]["seed"] == 3459 and report["files"] == 24
    for value in row["conditions"].values():
        assert 0.0 <= value["error"] < 0.3
    assert row["num_items"] + row["dropped_items"]["no_frames"] == len(read_item_file(items))
    assert (out / "report.txt").read_text() in capsys.readouterr().out
    bad = write_lines(tmp_path / "bad.item", ["247-170749-0000 0.1 0.2 A B C"])
    assert main([*args[:7], str(bad), *args[8:]]) == 2
    assert f"{bad}, line 2: expected 7 columns" in capsys.readouterr().err
    assert main([*args, "--alignments", str(DEMO / "converted_aligned_phones.txt")]) == 2


def zrc_abx2_scores(folder: Path, item_path: Path, order: list[str]) -> dict:
    """zrc-abx2's four scores, given the files in ``order`` (its walk order would sample other items)."""
    from zrc_abx2.eval_ABX import EvalABX, EvalArgs

    class Ordered(EvalABX):
        def _find_all_files(self, path_dir, extension):
            return sorted(super()._find_all_files(path_dir, extension), key=lambda entry: order.index(entry[0]))

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = Ordered().eval_abx(EvalArgs(str(folder), str(item_path)))
    return {f"{row['abx-s-condition']}-{row['abx-c-condition']}": row["score"] for row in rows}


def test_item_scores_equal_zrc_abx2(tmp_path):
    import_reference("zrc_abx2", "pip install setuptools_scm Cython && pip install --no-build-isolation "
                                 "zerospeech-libriabx2")
    feats, path = toy_items(tmp_path, seed=3, num_speakers=7, per_speaker=2)  # groups over 10, over 5 X speakers
    folder = tmp_path / "feats"
    for n, (utt, array) in enumerate(feats.items()):
        (folder / str(n % 3)).mkdir(parents=True, exist_ok=True)
        np.save(folder / str(n % 3) / f"{utt}.npy", array)
    items = read_item_file(path)
    ours = item_file_score(items, feats.__getitem__, {u: len(f) for u, f in feats.items()}, 100.0)
    reference = zrc_abx2_scores(folder, path, list(dict.fromkeys(items.file)))
    assert set(reference) == set(ours["conditions"])
    for condition, score in reference.items():
        assert ours["conditions"][condition]["error"] == pytest.approx(score, abs=1e-5), condition

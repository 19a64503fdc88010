"""Tests for audiossl.data.alignments."""

from __future__ import annotations

import numpy as np
import pytest

from audiossl.data.alignments import labels_for_frames, load_alignments, load_phone_inventory, load_split


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_inventory_round_trip(tmp_path):
    phones = ["SIL", "AA", "AE", "SPN"]
    path = write(tmp_path, "phones.txt", "".join(f"{i} {p}\n" for i, p in enumerate(phones)) + "\n")
    assert load_phone_inventory(path) == phones


@pytest.mark.parametrize(
    "text, line",
    [
        ("0 SIL\n2 AA\n", 2),
        ("1 SIL\n", 1),
        ("0 SIL\nx AA\n", 2),
        ("0 SIL\n1\n", 2),
        ("0 SIL\n1 AA\n2 SIL\n", 3),
    ],
)
def test_inventory_errors_name_file_and_line(tmp_path, text, line):
    path = write(tmp_path, "phones.txt", text)
    with pytest.raises(ValueError) as error:
        load_phone_inventory(path)
    assert str(path) in str(error.value)
    assert f"line {line}" in str(error.value)


def test_inventory_empty(tmp_path):
    path = write(tmp_path, "phones.txt", "\n")
    with pytest.raises(ValueError, match="empty"):
        load_phone_inventory(path)


def test_alignments_round_trip(tmp_path):
    expected = {
        "19-198-0000": np.array([0, 0, 5, 5, 40, 0]),
        "19-198-0001": np.array([3]),
    }
    text = "".join(f"{u} {' '.join(map(str, lab))}\n" for u, lab in expected.items())
    path = write(tmp_path, "converted_aligned_phones.txt", "\n" + text + "\n")
    loaded = load_alignments(path, num_classes=41)
    assert list(loaded) == list(expected)
    for utt_id, labels in expected.items():
        assert loaded[utt_id].dtype == np.int64
        np.testing.assert_array_equal(loaded[utt_id], labels)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("a 0 1\nb\n", 2, "'b'"),
        ("a 0 1\nb 0 x\n", 2, "non-integer"),
        ("a 0 1\nb 0\na 1\n", 3, "duplicate"),
        ("a 0 1\n\nb 0 41\n", 3, "outside [0, 41)"),
        ("a 0 -1\n", 1, "outside [0, 41)"),
    ],
)
def test_alignment_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, "aligned.txt", text)
    with pytest.raises(ValueError) as error:
        load_alignments(path, num_classes=41)
    message = str(error.value)
    assert str(path) in message
    assert f"line {line}" in message
    assert fragment in message


def test_alignments_without_num_classes_accept_any_label(tmp_path):
    path = write(tmp_path, "aligned.txt", "a 0 99\n")
    np.testing.assert_array_equal(load_alignments(path)["a"], [0, 99])


def test_split_round_trip_and_blank_lines(tmp_path):
    path = write(tmp_path, "train_split.txt", "a\n\n  b  \nc\n\n")
    assert load_split(path) == ["a", "b", "c"]


def test_split_duplicate_names_file(tmp_path):
    path = write(tmp_path, "test_split.txt", "a\nb\na\n")
    with pytest.raises(ValueError) as error:
        load_split(path)
    assert str(path) in str(error.value)
    assert "line 3" in str(error.value)
    assert "'a'" in str(error.value)


@pytest.mark.parametrize("num_frames", [8, 9, 10, 11, 12])
def test_labels_for_frames_within_tolerance(num_frames):
    labels = np.arange(10)
    result = labels_for_frames(labels, num_frames, "utt")
    assert len(result) == min(10, num_frames)
    np.testing.assert_array_equal(result, labels[: len(result)])


@pytest.mark.parametrize("num_frames", [7, 13, 5, 20])
def test_labels_for_frames_outside_tolerance(num_frames):
    with pytest.raises(ValueError) as error:
        labels_for_frames(np.zeros(10, dtype=np.int64), num_frames, "84-121123-0001")
    message = str(error.value)
    assert "84-121123-0001" in message
    assert "10" in message and str(num_frames) in message
    assert "frame rates" in message


def test_labels_for_frames_custom_tolerance():
    labels = np.zeros(10, dtype=np.int64)
    assert len(labels_for_frames(labels, 5, "u", tolerance=5)) == 5
    with pytest.raises(ValueError):
        labels_for_frames(labels, 9, "u", tolerance=0)

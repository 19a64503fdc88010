"""The heavy commands re-execute under tcmalloc when it is installed, once, and only when asked to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from audiossl.utils import allocator

from conftest import package_env


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/opt/lib/libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator, "loaded", lambda: False)
    for key in ("AUDIOSSL_ALLOCATOR", "AUDIOSSL_REEXEC", "LD_PRELOAD"):
        monkeypatch.delenv(key, raising=False)
    return calls


def test_heavy_command_reexecutes_with_the_library_preloaded(execs, monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/other/lib.so")
    allocator.reexec_under_tcmalloc("train", ["train", "--config", "c.yaml", "lr=1e-3"])
    (path, argv, env), = execs
    assert path == sys.executable and argv == [sys.executable, "-m", "audiossl.cli", "train", "--config", "c.yaml",
                                               "lr=1e-3"]
    assert env["LD_PRELOAD"] == "/opt/lib/libtcmalloc_minimal.so.4 /other/lib.so" and env["AUDIOSSL_REEXEC"] == "1"


@pytest.mark.parametrize("case", ["light command", "opted out", "already re-executed", "no library", "loaded"])
def test_no_reexecution(execs, monkeypatch, case):
    command = "prepare" if case == "light command" else "bench"
    if case == "opted out":
        monkeypatch.setenv("AUDIOSSL_ALLOCATOR", "system")
    if case == "already re-executed":
        monkeypatch.setenv("AUDIOSSL_REEXEC", "1")
    if case == "no library":
        monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    if case == "loaded":
        monkeypatch.setattr(allocator, "loaded", lambda: True)
    allocator.reexec_under_tcmalloc(command, [command])
    assert execs == []


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="tcmalloc is not installed")
def test_loaded_sees_a_preloaded_tcmalloc():
    probe = [sys.executable, "-c", "from audiossl.utils.allocator import loaded; print(loaded())"]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "False"
    env["LD_PRELOAD"] = allocator.find_tcmalloc()
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_the_entry_point_reexecutes_before_torch_is_imported():
    """``audiossl.cli`` decides the re-exec before importing torch: else every heavy command loads torch twice."""
    code = "import sys, audiossl.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=package_env()).stdout
    assert out.strip() == "[]"

"""The suite removes what its passing tests write. Kept for every test, a full run left about 23 GB of trained tiny
runs in /tmp, and three runs kept by pytest filled the disk: the CI run of stop 55 failed with ENOSPC."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

from conftest import MIN_FREE_TMP, module_dir, scratch_space_problem

TESTS = Path(__file__).resolve().parent


def test_pytest_keeps_only_failed_tests_folders():
    ini = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["tmp_path_retention_policy"] == "failed"
    assert ini["tmp_path_retention_count"] <= 1


def test_every_module_fixture_folder_goes_through_module_dir():
    direct = "tmp_path_factory" + ".mktemp("  # spelled apart so that this file does not match itself
    assert [p.name for p in sorted(TESTS.glob("test_*.py")) if direct in p.read_text()] == []


class _Request:
    def __init__(self):
        self.session, self.finalizers = SimpleNamespace(testsfailed=3), []

    def addfinalizer(self, f):
        self.finalizers.append(f)


def test_module_dir_is_removed_after_passing_tests_and_kept_after_a_failure(tmp_path_factory):
    for failures, kept in ((0, False), (1, True)):
        request = _Request()
        path = module_dir(request, tmp_path_factory, "scratch")
        (path / "run").mkdir()
        (path / "run" / "model.safetensors").write_bytes(b"x" * 64)
        request.session.testsfailed += failures
        for f in request.finalizers:
            f()
        assert path.exists() is kept


def test_too_little_free_space_stops_the_suite_with_one_line():
    assert scratch_space_problem("/tmp", MIN_FREE_TMP) is None
    line = scratch_space_problem("/tmp", 1 << 30)
    assert "\n" not in line and "1.0 GB is free" in line and "/tmp" in line

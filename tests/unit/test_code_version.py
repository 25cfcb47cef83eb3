"""Which code made a run: the commit slimnlp is checked out at and the run-relevant files that differ from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slimnlp.results import checkout_state

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import kept_cells


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def _project(root: Path) -> Path:
    package = root / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (root / "train.py").write_text("print()\n")
    (root / "README.md").write_text("# p\n")
    (root / ".gitignore").write_text("__pycache__/\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "first")
    return package


def test_a_clean_checkout_names_its_commit_and_nothing_modified(tmp_path):
    package = _project(tmp_path)
    assert checkout_state(package) == {"commit": _git(tmp_path, "rev-parse", "HEAD"), "modified": []}


def test_edits_to_code_are_listed_and_edits_elsewhere_are_not(tmp_path):
    package = _project(tmp_path)
    (package / "__init__.py").write_text("x = 2\n")
    (package / "new_technique.py").write_text("y = 1\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "a.pyc").write_bytes(b"\0")  # ignored: never a difference
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "README.md").write_text("# q\n")  # documentation: not what a run computes with
    state = checkout_state(package)
    assert state["modified"] == ["src/pkg/__init__.py", "src/pkg/new_technique.py", "train.py"]


def test_a_package_outside_a_checkouts_src_has_no_code_version(tmp_path):
    _project(tmp_path)
    installed = tmp_path / "venv" / "site-packages" / "pkg"  # a wheel installed inside another project's repo
    installed.mkdir(parents=True)
    assert checkout_state(installed) is None
    outside = tmp_path.parent / f"{tmp_path.name}_plain" / "pkg"
    outside.mkdir(parents=True)
    assert checkout_state(outside) is None


def test_the_cell_driver_holds_the_next_cell_until_the_code_is_committed(monkeypatch, capsys):
    states = iter([{"commit": "abc", "modified": ["src/slimnlp/x.py"]}] * 3 + [{"commit": "abd", "modified": []}])
    seen = []
    monkeypatch.setattr(kept_cells, "checkout_state", lambda package: seen.append(package) or next(states))
    kept_cells.wait_for_committed_code(poll_s=0)
    assert len(seen) == 4 and seen[0] == kept_cells.REPO / "src" / "slimnlp"
    assert capsys.readouterr().out.count("next cell waits: src/slimnlp/x.py differ from commit abc") == 1

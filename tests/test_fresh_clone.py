"""The README's and the Makefile's commands, on a fresh clone of the repository.

The default suite only checks that the README cannot drift from the Makefile and the CLI (every
``make X`` it shows is a Makefile target, every ``spurig X`` a subcommand whose ``--help`` works).

The ``slow`` tests clone the repository into a temporary folder and run the commands there:
``make -n`` of every target, ``make venv`` from scratch, ``make lint``, ``make demo`` (its tiny
mode), ``make test`` on a subset with a GUI test, and ``make bench`` at a tiny size.

* A ``git clone`` holds only committed files: commit first, or set
  ``SPURIG_FRESH_FROM_WORKTREE=1`` to copy the working tree's files instead (tracked and untracked
  but not ignored ones, as ``git ls-files -co --exclude-standard`` lists them).
* ``make venv`` takes minutes.  ``SPURIG_FRESH_VENV=/path/to/.venv`` (an existing venv of this
  project) makes the other tests use it, with the clone's ``src`` first on ``PYTHONPATH``, instead
  of building one in the clone; ``test_make_venv_from_scratch`` always builds its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPURIG = Path(sys.executable).with_name("spurig")


def makefile_targets(makefile: Path) -> set[str]:
    """Return a Makefile's explicit targets (``name:`` rules; variables and patterns excluded)."""
    targets = set()
    for line in makefile.read_text().splitlines():
        m = re.match(r"^([A-Za-z][\w.-]*(?:\s+[A-Za-z][\w.-]*)*)\s*:(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return targets


def readme_commands(readme: Path) -> tuple[set[str], set[str]]:
    """Return the ``make X`` targets and ``spurig X`` subcommands the README shows, in code only.

    Code is every fenced block and every inline backtick span.
    """
    text = readme.read_text()
    code = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
        code += [line.split("#")[0] for line in block.splitlines()]  # comments: spans only
    code += re.findall(r"`([^`\n]+)`", text)
    make, spurig = set(), set()
    for line in code:
        make.update(re.findall(r"(?:^|[\s;&|(])make\s+([a-z][\w-]*)", line))
        spurig.update(re.findall(r"(?:^|[\s;&|(])spurig\s+([a-z][\w-]*)", line))
    return make, spurig


def test_readme_make_targets_exist() -> None:
    make, _ = readme_commands(ROOT / "README.md")
    assert {"demo", "test"} <= make, "the README's set-up commands are `make demo` / `make test`"
    missing = make - makefile_targets(ROOT / "Makefile")
    assert not missing, f"README shows `make {sorted(missing)}` but the Makefile has no such target"


def test_readme_spurig_commands_exist() -> None:
    _, spurig = readme_commands(ROOT / "README.md")
    assert {"demo", "recon", "bench", "gui"} <= spurig
    for sub in sorted(spurig):
        run = subprocess.run([str(SPURIG), sub, "--help"], capture_output=True, text=True)
        assert run.returncode == 0, f"README shows `spurig {sub}`: {run.stderr.strip()}"
        assert f"spurig {sub}" in run.stdout


def test_readme_parser_sees_code_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "To make sure, run `make lint`.\n```bash\nmake demo   # make nothing, `spurig match`\n"
        "spurig recon a b\n```\nThe spurig team; `spurig gui x.h5` and `spurig_core`.\n"
    )
    assert readme_commands(readme) == ({"lint", "demo"}, {"recon", "gui", "match"})
    mk = tmp_path / "Makefile"
    mk.write_text("X := 1\nY ?= 2\n.PHONY: a b\na b: c\n\t@echo\n$(S): d\nc:\n")
    assert makefile_targets(mk) == {"a", "b", "c"}


# --- slow: a fresh clone -------------------------------------------------------------------------


@dataclass
class Fresh:
    """A fresh copy of the repository and how to run ``make`` in it."""

    root: Path
    make_vars: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def make(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """Run ``make ARGS`` in the copy; stdout and stderr together in ``.stdout``."""
        return subprocess.run(
            ["make", *args, *self.make_vars],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )


def fresh_copy(dest: Path) -> Path:
    """``git clone`` the repository into ``dest`` (or copy the working tree's files, see top)."""
    if os.environ.get("SPURIG_FRESH_FROM_WORKTREE") == "1":
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")
        for rel in filter(None, files):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    else:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def clean_env() -> dict[str, str]:
    """Return the environment of a user's shell: no venv, no pytest or coverage variables."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "MAKEFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("COV_")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT / ".venv"))
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def tail(run: subprocess.CompletedProcess[str], n: int = 40) -> str:
    return "\n".join(run.stdout.splitlines()[-n:])


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    """Make a fresh clone with a usable venv: ``SPURIG_FRESH_VENV`` reused, or ``make venv`` run."""
    f = Fresh(fresh_copy(tmp_path_factory.mktemp("fresh") / "spurig"), env=clean_env())
    reuse = os.environ.get("SPURIG_FRESH_VENV")
    if reuse:
        venv = Path(reuse).resolve()
        assert (venv / ".installed").exists(), f"SPURIG_FRESH_VENV={reuse}: not an installed venv"
        # Older than the venv's stamp, so make does not reinstall into the shared venv.
        for name in ("pyproject.toml", "constraints.txt"):
            os.utime(f.root / name, (0, 0))
        f.make_vars = [f"VENV={venv}"]
        f.env["PYTHONPATH"] = str(f.root / "src")
    else:
        run = f.make("venv")
        assert run.returncode == 0, tail(run)
    yield f


@pytest.mark.slow
def test_make_dry_run_every_target(fresh: Fresh) -> None:
    targets = makefile_targets(fresh.root / "Makefile") - {".PHONY", ".installed"}
    assert {"demo", "test", "test-all", "gui", "bench", "lint", "venv", "preflight"} <= targets
    for target in sorted(targets):
        if "/" in target or target.startswith("$"):
            continue
        run = fresh.make("-n", target, timeout=60)
        assert run.returncode == 0, f"make -n {target}: {tail(run)}"


@pytest.mark.slow
def test_make_venv_from_scratch(fresh: Fresh, tmp_path: Path) -> None:
    if fresh.make_vars:  # the module's clone reuses a venv: build one here
        fresh = Fresh(fresh_copy(tmp_path / "spurig"), env=clean_env())
        run = fresh.make("venv")
        assert run.returncode == 0, tail(run)
    venv = fresh.root / ".venv"
    assert (venv / ".installed").exists()
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import spurig_core, napari_spurig, napari, pytest_xvfb;print(spurig_core.__file__)",
        ],
        capture_output=True,
        text=True,
        env=fresh.env,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(fresh.root / "src")
    version = subprocess.run([str(venv / "bin" / "spurig"), "--version"], capture_output=True)
    assert version.returncode == 0
    again = fresh.make("venv", timeout=120)  # idempotent: nothing left to do
    assert again.returncode == 0 and "pip install" not in again.stdout, tail(again)


@pytest.mark.slow
def test_make_lint(fresh: Fresh) -> None:
    run = fresh.make("lint", timeout=900)
    assert run.returncode == 0, tail(run)
    assert "Success: no issues found" in run.stdout


@pytest.mark.slow
def test_make_demo_tiny(fresh: Fresh) -> None:
    run = fresh.make("demo", "DEMO_ARGS=--tiny --out demo_tiny", timeout=900)
    assert run.returncode == 0, tail(run)
    report = fresh.root / "demo_tiny" / "report.md"
    assert report.exists() and "Table 1" in report.read_text()
    assert "spurig demo:" in run.stdout


@pytest.mark.slow
def test_make_test_subset_with_gui(fresh: Fresh) -> None:
    args = (
        "-q -p no:cacheprovider tests/test_napari_io.py tests/test_napari_widgets.py "
        "-k 'test_manifest_is_valid_and_discovered or "
        "test_reconstruct_adjoint_saves_and_opens_result'"
    )
    run = fresh.make("test", f"PYTEST_ARGS={args}", timeout=1200)
    assert run.returncode == 0, tail(run)
    assert re.search(r"\b2 passed\b", run.stdout), tail(run)
    assert "skipped" not in run.stdout, tail(run)  # the GUI test ran, under Xvfb


@pytest.mark.slow
def test_make_bench_tiny(fresh: Fresh) -> None:
    run = fresh.make(
        "bench",
        "BENCH_MATRIX=16",
        "BENCH_GROUPS=2",
        "BENCH_ARGS=--quick --only simulate,llr-prox",
        timeout=1200,
    )
    assert run.returncode == 0, tail(run)
    table = (fresh.root / "benchmarks" / "bench-latest.md").read_text()
    assert "llr" in table
    assert re.search(r"\| simulate \| ok \|", run.stdout) and "| llr-prox | ok |" in run.stdout

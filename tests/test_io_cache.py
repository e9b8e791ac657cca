"""The disk cache of derived physics (``spurig_core.io_cache``).

File names, reuse of an entry, broken entries and an unwritable cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spurig_core import io_cache


def _maker(calls: list[int], value: float = 1.0):  # type: ignore[no-untyped-def]
    def make() -> dict:
        calls.append(1)
        return {"kind": "test/1", "x": torch.full((3,), value)}

    return make


def test_entry_is_made_once_then_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPURIG_CACHE", str(tmp_path / "cache"))
    assert io_cache.cache_dir() == tmp_path / "cache"
    calls: list[int] = []
    first = io_cache.cached("entry.pt", _maker(calls))
    assert (tmp_path / "cache" / "entry.pt").is_file() and calls == [1]
    second = io_cache.cached("entry.pt", _maker(calls, value=2.0))
    assert calls == [1] and torch.equal(first["x"], second["x"])  # read, not made again
    assert not list((tmp_path / "cache").glob(".*tmp"))


@pytest.mark.parametrize("content", [b"truncated", None])
def test_broken_entry_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None
) -> None:
    monkeypatch.setenv("SPURIG_CACHE", str(tmp_path))
    path = tmp_path / "entry.pt"
    if content is None:
        torch.save({"no": "kind"}, path)  # loads, but is not a cache state
    else:
        path.write_bytes(content)
    calls: list[int] = []
    state = io_cache.cached("entry.pt", _maker(calls, value=3.0))
    assert calls == [1] and float(state["x"][0]) == 3.0
    assert float(torch.load(path, weights_only=True)["x"][0]) == 3.0  # replaced on disk


def test_unwritable_cache_does_not_stop_the_computation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SPURIG_CACHE", str(blocker / "cache"))
    calls: list[int] = []
    state = io_cache.cached("entry.pt", _maker(calls))
    assert calls == [1] and state["kind"] == "test/1"
    assert blocker.read_text() == "not a directory"


def test_file_names_carry_version_and_keys() -> None:
    basis = torch.eye(4, 2, dtype=torch.complex64)
    name = io_cache.dictionary_file("seqkey", "gridkey", basis)
    assert (
        name
        == f"dictionary-v{io_cache.CACHE_VERSION}-seqkey-gridkey-{io_cache.tensor_key(basis)}.pt"
    )
    assert io_cache.basis_file("seqkey", "gridkey", 5) == (
        f"basis-v{io_cache.CACHE_VERSION}-seqkey-gridkey-k5.pt"
    )
    other = basis.clone()
    other[0, 0] = 0.5
    assert io_cache.tensor_key(other) != io_cache.tensor_key(basis)
    assert io_cache.tensor_key(basis.to(torch.complex128)) == io_cache.tensor_key(basis)

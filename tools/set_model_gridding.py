r"""Set the gridding a shipped model reconstructs with, keeping the record of its training data's.

A model file's ``gridding`` is what ``spurig recon`` (and every entry point that reads the file)
grids a scan with for it (:func:`spurig_core.recon.trained.gridding_groups`).  It was the gridding
of the training data; issue 14 (session 28) moved the iGROG kernel network of the shipped files to
half the width after measuring, on the held-out test subjects, that their reconstructions do not
change beyond the noise of a kernel fit (``benchmarks/RESULTS-models.md``, session 28).  This tool
writes the new settings from a TOML's ``[gridding]`` table into each file's ``gridding``, keeps
the settings it replaces as ``training_gridding`` (once: a second change keeps the first record),
and puts both, with ``--note``, on the model card, whose sha256 line it refreshes.

Run::

    .venv/bin/python tools/set_model_gridding.py --gridding configs/cpu48v15/prepare.toml \\
        --note "issue 14, session 28: ..." src/spurig_core/models/spurig-{2min,1min,30s}.pt

Every file is checked before any is written; each is replaced through a temporary file.
Exit status 2 with one line on bad input (a file that is not a spurig model with a gridding
record, a table that is not a valid gridding or sets a field the record does not have).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from spurig_core.config import from_dict, read_toml
from spurig_core.errors import InputError
from spurig_core.io import atomic_path, load_checkpoint, save_checkpoint
from spurig_core.operators.igrog import GriddingConfig, data_fields
from spurig_core.recon.unrolled import MODEL_KIND

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ship_models import refresh_sha

#: Card line prefixes of the gridding records (written by ``tools/ship_recipe.py`` too).
USED_PREFIX = "- Gridding used when it reconstructs a scan: "
TRAINING_PREFIX = "- Gridding of its training data"


def new_gridding(old: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    """Return ``old`` with the (validated) data fields ``given`` applied."""
    extra = sorted(set(given) - set(old))
    if extra:
        raise InputError(f"{where}: gridding record has no field {', '.join(extra)}")
    return {**old, **given}


def card_lines(used: dict[str, Any], training: dict[str, Any], note: str) -> list[str]:
    """Return the card's two gridding lines (one where both are the same)."""
    if used == training:
        return [f"{TRAINING_PREFIX}, used again when it reconstructs a scan: `{json.dumps(used)}`."]
    return [
        f"{USED_PREFIX}`{json.dumps(used)}`" + (f" ({note})." if note else "."),
        f"{TRAINING_PREFIX}: `{json.dumps(training)}`.",
    ]


def gridding_lines(card: Path) -> list[int]:
    """Return the indices of the card's gridding lines (InputError when it has none)."""
    text = card.read_text().split("\n")
    at = [i for i, ln in enumerate(text) if ln.startswith((USED_PREFIX, TRAINING_PREFIX))]
    if not at:
        raise InputError(f"{card}: no gridding line to replace")
    return at


def update_card(card: Path, lines: list[str]) -> None:
    """Replace the card's gridding line(s) with ``lines`` (the card must have one)."""
    at = gridding_lines(card)
    text = card.read_text().split("\n")
    text[at[0] : at[-1] + 1] = lines
    with atomic_path(card) as tmp:
        Path(tmp).write_text("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path, help="model files (.pt) to update")
    p.add_argument("--gridding", required=True, type=Path, help="TOML with a [gridding] table")
    p.add_argument("--note", default="", help="why (put on the card next to the settings)")
    args = p.parse_args(argv)
    try:
        if not args.gridding.is_file():
            raise InputError(f"{args.gridding}: no such file")
        table = dict(read_toml(args.gridding).get("gridding") or {})
        if not table:
            raise InputError(f"{args.gridding}: no [gridding] table")
        from_dict(GriddingConfig, table, where="gridding")  # the table as a whole, once
        given = data_fields(table)
        plans = []
        for path in args.models:
            if not path.is_file():
                raise InputError(f"{path}: no such file")
            state = load_checkpoint(path)
            if state.get("kind") != MODEL_KIND or not isinstance(state.get("gridding"), dict):
                raise InputError(f"{path}: not a spurig model with a gridding record")
            if not path.with_suffix(".md").is_file():
                raise InputError(f"{path}: no model card {path.with_suffix('.md').name}")
            gridding_lines(path.with_suffix(".md"))  # every card checked before any write
            used = new_gridding(state["gridding"], given, str(path))
            plans.append((path, state, used))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, state, used in plans:
        training = state.setdefault("training_gridding", dict(state["gridding"]))
        state["gridding"] = used
        if args.note:
            state["gridding_note"] = args.note
        save_checkpoint(state, path)
        card = path.with_suffix(".md")
        update_card(card, card_lines(used, training, args.note))
        refresh_sha(card, path)
        changed = sorted(k for k in used if used[k] != training.get(k))
        print(f"{path.name}: gridding {', '.join(changed) or 'as its training data'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

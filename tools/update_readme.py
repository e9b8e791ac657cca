"""Regenerate the README's measured tables and figure from a `spurig demo` output folder.

    spurig demo --out demo_out
    python tools/update_readme.py demo_out

Copies the demo's Figure-2-style panel to ``docs/images/demo_c1.png`` and replaces the text between
``<!-- demo:begin -->`` and ``<!-- demo:end -->`` in README.md with the demo report's tables
(coefficients, quantitative maps, reconstruction time), so no number in the README is typed by hand.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- demo:begin -->", "<!-- demo:end -->"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/update_readme.py DEMO_OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    report = out / "report.md"
    if not report.exists():
        print(f"{report}: no such file (run `spurig demo --out {out}` first)", file=sys.stderr)
        return 2
    text = report.read_text(encoding="utf-8")
    # Keep the report's intro and its table sections; drop figure and file lists.
    keep = []
    for block in re.split(r"(?m)^## ", text)[1:]:
        title = block.splitlines()[0]
        if title.startswith(("Figures", "Files")):
            continue
        keep.append("#### " + block.strip())
    intro = text.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    figs = sorted((out / "figures").glob("fig2_*_c1.png"))
    img = ""
    if figs:
        dest = ROOT / "docs" / "images" / "demo_c1.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figs[0], dest)
        img = "![demo: balanced c1, reference and methods](docs/images/demo_c1.png)\n\n"
    body = f"{BEGIN}\n{intro}\n\n{img}" + "\n\n".join(keep) + f"\n{END}"
    readme = ROOT / "README.md"
    s = readme.read_text(encoding="utf-8")
    if BEGIN in s and END in s:
        s = s[: s.index(BEGIN)] + body + s[s.index(END) + len(END) :]
    else:
        s = s.rstrip() + "\n\n## Measured on the sample scan\n\n" + body + "\n"
    readme.write_text(s, encoding="utf-8")
    print(f"updated {readme} from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Regenerate the README's measured tables and figure from a `spurig demo` output folder.

    spurig demo --out demo_out
    python tools/update_readme.py demo_out [--cohort data/eval48/report]

Copies the demo's Figure-2-style panel to ``docs/images/demo_c1.png`` and replaces the text between
``<!-- demo:begin -->`` and ``<!-- demo:end -->`` in README.md with the demo report's tables
(coefficients, quantitative maps, reconstruction time), so no number in the README is typed by hand.
With ``--cohort DIR`` (the ``report/`` folder of ``tools/evaluate_models.py``), the held-out
test-set Tables 1 and 2 replace the text between ``<!-- cohort:begin -->`` and
``<!-- cohort:end -->``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- demo:begin -->", "<!-- demo:end -->"
CBEGIN, CEND = "<!-- cohort:begin -->", "<!-- cohort:end -->"


def _replace(s: str, begin: str, end: str, body: str, heading: str) -> str:
    if begin in s and end in s:
        return s[: s.index(begin)] + body + s[s.index(end) + len(end) :]
    return s.rstrip() + f"\n\n## {heading}\n\n" + body + "\n"


def _cohort_body(report_dir: Path) -> str:
    parts = [CBEGIN]
    for name, title in (("table1.md", "Coefficients (Table 1)"), ("table2.md", "T1/T2 (Table 2)")):
        f = report_dir / name
        if f.exists():
            parts.append(f"#### {title}\n\n{f.read_text(encoding='utf-8').strip()}")
    parts.append(CEND)
    return "\n\n".join(parts)


def main(argv: list[str]) -> int:
    cohort = None
    if "--cohort" in argv:
        i = argv.index("--cohort")
        if i + 1 >= len(argv):
            print("usage: python tools/update_readme.py DEMO_OUT [--cohort DIR]", file=sys.stderr)
            return 2
        cohort = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
        if not (cohort / "table1.md").exists():
            print(f"{cohort}/table1.md: no such file", file=sys.stderr)
            return 2
    if len(argv) != 1:
        print("usage: python tools/update_readme.py DEMO_OUT [--cohort DIR]", file=sys.stderr)
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
    intro = text.split("\n## ", 1)[0].split("\n", 1)[1].strip().replace(f"{ROOT}/", "")
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
    s = _replace(s, BEGIN, END, body, "Measured on the sample scan")
    if cohort is not None:
        s = _replace(
            s, CBEGIN, CEND, _cohort_body(cohort), "Measured on the held-out test subjects"
        )
    readme.write_text(s, encoding="utf-8")
    print(f"updated {readme} from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

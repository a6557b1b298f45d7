"""Print the Markdown table of CPU projector results for benchmarks/README.md.

    uv run python benchmarks/make_table.py                  # every benchmarks/results/cpu-*.json
    uv run python benchmarks/make_table.py results/a.json   # chosen files

Times are medians of the timed repeats (IQR beside them); "CPU ms" is the median process
CPU time per call (all threads; robust to other work on the machine, but it counts idle
spinning too); "vs RTK" is this row's median divided by RTK Joseph's median on the same
machine and case (below 1 = faster than RTK).
Errors are |image - exact| / exact over pixels whose exact line integral exceeds 1 % of
the maximum; "interior" keeps only rays that graze no phantom surface (see the README).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

HEADER = ("| Projector | Settings | Views | Median ms | IQR ms | CPU ms | vs RTK | "
          "Mean rel. err | Max rel. err | Interior mean | Interior max |")
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def table(results: list[dict]) -> str:
    """Markdown: one caption line and one table per results file."""
    blocks = []
    for res in results:
        m, v = res["machine"], res["versions"]
        dirty = " + uncommitted drrkit changes" if res.get("drrkit_dirty") else ""
        load = res.get("load_average", {}).get("before", [float("nan")])[0]
        caption = (f"**{m['cpu']}**, {m['threads']} threads; commit `{res['commit'][:8]}`{dirty} "
                   f"(`drrkit/_cpu.py` {res.get('drrkit_cpu_sha256', '?')}), {res['date']}, "
                   f"load average {load:.1f} at start; "
                   f"numba {v.get('numba')}, itk-rtk {v.get('itk-rtk')}, "
                   f"diffdrr {v.get('diffdrr')}, torch {v.get('torch')}")
        rtk = {r["case"]: r["median_s"] for r in res["results"] if r["library"] == "RTK"}
        lines = [caption, "", HEADER, RULE]
        cases = list(dict.fromkeys(r["case"] for r in res["results"]))
        for case in cases:
            for r in (r for r in res["results"] if r["case"] == case):
                a = r["accuracy"]
                ratio = f"{r['median_s'] / rtk[case]:.2f}x" if case in rtk else "n/a"
                lines.append(
                    f"| {r['library']} | {r['settings']} | {case.split()[0]} | "
                    f"{1e3 * r['median_s']:.1f} | {1e3 * r['iqr_s']:.1f} | "
                    f"{1e3 * r['cpu_median_s']:.1f} | {ratio} | "
                    f"{_pct(a['mean_rel'])} | {_pct(a['max_rel'])} | "
                    f"{_pct(a['interior_mean_rel'])} | {_pct(a['interior_max_rel'])} |")
        lines += [""] + _ratios(res["results"], cases)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _ratios(rows: list[dict], cases: list[str]) -> list[str]:
    """Sentences for the ratios the issue asks for: drrkit vs RTK and DiffDRR vs drrkit."""
    out = []
    for case in cases:
        here = [r for r in rows if r["case"] == case]
        ours = [r for r in here if r["library"] == "drrkit"]
        for other in (r for r in here if r["library"] in ("RTK", "DiffDRR")):
            parts = [f"{other['median_s'] / r['median_s']:.2f}x ({r['settings']})" for r in ours]
            if parts:
                out.append(f"- {case}: {other['library']} time / drrkit time = "
                           + ", ".join(parts))
    return out


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted(RESULTS.glob("cpu-*.json"))
    if not paths:
        print(f"no results in {RESULTS}; run benchmarks/cpu_projectors.py first", file=sys.stderr)
        return 1
    print(table([json.loads(p.read_text()) for p in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

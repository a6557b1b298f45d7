"""Print Markdown tables of benchmark results for benchmarks/README.md, from the JSON files.

    uv run python benchmarks/make_table.py                  # CPU projectors: every results/cpu-*.json
    uv run python benchmarks/make_table.py results/a.json   # CPU projectors: chosen files
    uv run python benchmarks/make_table.py KIND [FILE ...]  # another benchmark's results

KIND is one of triangulation, label-timing, training, recipe, ablation, real-ct, demo
(every ``results/KIND-*.json`` unless files are given).

CPU projectors: times are medians of the timed repeats (IQR beside them); "CPU ms" is the
median process CPU time per call (all threads; robust to other work on the machine, but it
counts idle spinning too); "vs RTK" is this row's median divided by RTK Joseph's median on
the same machine and case (below 1 = faster than RTK).
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


def _seconds(x: float) -> str:
    return f"{x:.3f}" if x < 0.01 else f"{x:.2f}"


def triangulation_table(results: list[dict]) -> str:
    """One caption, table and correspondence line per file (as triangulation.py prints)."""
    blocks = []
    for res in results:
        m = res["machine"]
        base = next(r for r in res["results"] if r["backend"] == "numpy"
                    and "einsum" in r["name"])
        per_base = base["median_s"] / base["problems"]
        lines = [(f"**{m['gpu'] or m['cpu']}**, {m['threads']} threads, commit "
                  f"`{res['commit'][:8]}`, {res['date'][:10]}, load average "
                  f"{res['load_average']['before'][0]:.1f} at start; {res['rays']} rays "
                  f"per problem, {res['dtype']}"), "",
                 ("| Method | Backend | Problems | Median ms | IQR ms | ns / problem | "
                  "vs baseline |"), "|---|---|---:|---:|---:|---:|---:|"]
        for r in res["results"]:
            per = r["median_s"] / r["problems"]
            lines.append(f"| {r['name']} | {r['backend']} | {r['problems']:,} | "
                         f"{1e3 * r['median_s']:.1f} | {1e3 * r['iqr_s']:.1f} | "
                         f"{1e9 * per:.0f} | {per_base / per:.1f}x |")
        c = res.get("correspondence")
        if c:
            lines += ["", (f"match_views on {c['subjects']} synthetic spines: detection "
                           f"accuracy {c['detection_accuracy']:.4f}, {c['extra_tracks']} extra "
                           f"and {c['missing_tracks']} missing tracks, point error median "
                           f"{c['point_error_mm_median']:.2f} mm (max "
                           f"{c['point_error_mm_max']:.2f}), "
                           f"{1e3 * c['seconds_per_subject_median']:.0f} ms per subject")]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def label_timing_table(results: list[dict]) -> str:
    """Stages down, one column per file (median seconds), captions below."""
    stages = list(dict.fromkeys(s for res in results for s in res["stages"]))
    heads, notes = [], []
    for i, res in enumerate(results, 1):
        k = res.get("localizer_views") or res["views"][0]
        bone = res.get("view_config", {}).get("bone_gain") or 1
        heads.append(f"({i}) {res['preset']}, {res['encoder']}, {k} localizer views"
                     + (f", bone x{bone:g}" if bone != 1 else ""))
        notes.append(f"({i}) {res['gpu'] or res['cpu']}, {res['device']}, {res['threads']} "
                     f"threads, commit `{res['commit'][:7]}`, {res['date'][:10]}, load "
                     f"{res['load_average'][0]:.1f}-{res['load_average'][1]:.1f}, median of "
                     f"{res['repeats']} after {res['warmup']} warm-up")
    lines = ["| stage | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(results)]
    for s in stages:
        cells = [_seconds(r["stages"][s]["median_s"]) if s in r["stages"] else "-"
                 for r in results]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r['total_median_s']:.1f}**"
                                                for r in results) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def training_table(results: list[dict]) -> str:
    """One caption and table per file: float32 and mixed-precision steps side by side."""
    blocks = []
    for res in results:
        h = res["hardware"]
        lines = [(f"**{h['name']}**, {h['device']}, {h['threads']} threads, commit "
                  f"`{res['commit'][:7]}`, {res['date'][:10]}, load average "
                  f"{res['load_average_before'][0]:.1f} at start; median of "
                  f"{res['method']['repeats']} steps after {res['method']['warmup']}"), "",
                 ("| preset | task | network, crop, batch | float32 step | it/s | amp step | "
                  "it/s | batch from cache | rendered on the fly |"),
                 "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        keys = list(dict.fromkeys((r["config"], r["task"]) for r in res["rows"]))
        for key in keys:
            rows = {r["amp"]: r for r in res["rows"] if (r["config"], r["task"]) == key}
            f32, amp = rows.get(False), rows.get(True)
            first = f32 or amp
            cells = []
            for r in (f32, amp):
                cells += ([f"{1e3 * r['step']['median_s']:.0f} ms",
                           f"{r['step']['it_per_s']:.2f}"] if r else ["-", "-"])
            cached, fly = first.get("data_cached"), first.get("data_on_the_fly")
            cells += [f"{1e3 * cached['median_s']:.0f} ms" if cached else "-",
                      f"{fly['median_s']:.2f} s" if fly else "-"]
            task = key[1] + (" (+ Sequence Loss)" if first["sequence_loss"] else "")
            lines.append(f"| {key[0]} | {task} | {first['encoder']}, {first['crop_size']} px, "
                         f"{first['batch_size']} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def recipe_table(results: list[dict]) -> str:
    """One caption and table per file: held-out scores after each stage."""
    blocks = []
    for res in results:
        c, d = res["config"], res["data"]
        lines = [(f"**{res['task']}**, preset {res['preset']} (batch {c['batch_size']}, "
                  f"decay at {c['lr_step']}, sigma {c['sigma_mm']:g} mm), trained on "
                  f"{d['train']} x {d['orbits']} orbits, scored on {d['held_out_views']} views "
                  f"of {d['held_out']}; {res['hardware']['cpu']}, "
                  f"{res['hardware']['threads']} threads, commit `{res['commit'][:7]}`, "
                  f"{res['date'][:10]}"), ""]
        if res["task"] == "localization":
            ts = res["thresholds"]
            lines += ["| iterations | training s | " + " | ".join(
                f"threshold {t}: error, detected, false pos./view" for t in ts) + " |",
                      "|---:|---:|" + "---|" * len(ts)]
            for r in res["rows"]:
                cells = [f"{s['median_error_mm']:.1f} mm, {100 * s['detection_rate']:.0f} %, "
                         f"{s['false_positives_per_view']:.2f}"
                         for s in (r["scores"][str(t)] for t in ts)]
                lines.append(f"| {r['iteration']} | {r['train_s']:.0f} | "
                             + " | ".join(cells) + " |")
        else:
            names = ("pixel_accuracy", "square_accuracy", "square_accuracy_pm1",
                     "sequence_accuracy")
            lines += [("| iterations | training s | pixel | square | square within one "
                       "level | sequence |"), "|---:|---:|---:|---:|---:|---:|"]
            for r in res["rows"]:
                lines.append(f"| {r['iteration']} | {r['train_s']:.0f} | " + " | ".join(
                    f"{100 * r['scores'][n]:.1f} %" for n in names) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _regions(regions: dict) -> str:
    return ", ".join(f"{k} {v['identified']}/{v['n_gt']}" for k, v in regions.items())


def ablation_table(results: list[dict]) -> str:
    """One caption and table per file: the four rows of the paper's Table 2."""
    blocks = []
    for res in results:
        lines = [(f"**{res['cpu']}**, commit `{res['commit'][:7]}`, {res['date'][:10]}, "
                  f"{sum(res['seconds'].values()):.0f} s of steps in this run"), "",
                 ("| row | pre-trained | Sequence Loss | voting | id rate | l_error | "
                  "identified per region |"), "|---|---|:-:|---|---:|---:|---|"]
        for r in res["rows"]:
            pre = r["pretrained"]
            pre = (", ".join(pre) or "-") if isinstance(pre, list) else ("x" if pre else "-")
            lines.append(f"| {r['row']} | {pre} | {'x' if r['sequence_loss'] else ''} | "
                         f"{r['voting']} | {100 * r['id_rate']:.2f} % | "
                         f"{r['l_error_mm']:.2f} mm | {_regions(r['regions'])} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def real_ct_table(results: list[dict]) -> str:
    """One row per file and case."""
    lines = [("| results name | commit, date | case | scored | predicted | identified | "
              "id rate | l_error | predicted labels |"), "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for res in results:
        for name, c in res["cases"].items():
            labels = " ".join(p["name"] for p in c.get("predictions") or []) or "-"
            err = "-" if c["l_error"] is None else f"{c['l_error']:.1f} mm"
            lines.append(f"| {res['name']} | `{res['commit'][:7]}`, {res['date'][:10]} | {name} "
                         f"| {c['n_gt']} | {c['n_pred']} | {c['identified']} | "
                         f"{100 * c['id_rate']:.1f} % | {err} | {labels} |")
    return "\n".join(lines)


def demo_table(results: list[dict]) -> str:
    """One row per file: pooled held-out scores and the time of each step."""
    lines = [("| recipe | machine | id rate (95 % interval) | l_error (interval) | identified: "
              "median, mean, within 2 mm | per region | minutes: data, pre-training, "
              "localizer, identifier, labelling |"), "|---|---|---:|---:|---|---|---|"]
    for res in results:
        rep = res.get("report", res)
        p, cfg = rep["pooled"], rep["config"]
        cpu = res.get("cpu") or res.get("machine", {}).get("cpu", "?")
        iv, e = p["interval"], p["identified_error"]
        mins = ", ".join(f"{v / 60:.1f}" for v in rep["seconds"].values())
        lines.append(f"| {cfg.get('recipe', 'cpu-demo')} | {cpu} | {100 * p['id_rate']:.1f} % "
                     f"({100 * iv['id_rate'][0]:.1f}-{100 * iv['id_rate'][1]:.1f}) | "
                     f"{p['l_error']:.2f} mm ({iv['l_error'][0]:.2f}-{iv['l_error'][1]:.2f}) | "
                     f"{e['median']:.2f}, {e['mean']:.2f} mm, {100 * e['within_2mm']:.1f} % | "
                     f"{_regions(p['regions'])} | {mins} ({sum(rep['seconds'].values()) / 60:.1f})"
                     " |")
    return "\n".join(lines)


#: KIND -> (results file pattern, table function).
KINDS = {"triangulation": ("triangulation-*.json", triangulation_table),
         "label-timing": ("label-timing-*.json", label_timing_table),
         "training": ("training-*.json", training_table),
         "recipe": ("recipe-*.json", recipe_table),
         "ablation": ("ablation-*.json", ablation_table),
         "real-ct": ("real-ct-*.json", real_ct_table),
         "demo": ("demo-*.json", demo_table)}


def main(argv: list[str]) -> int:
    pattern, make = "cpu-*.json", table
    if argv and argv[0] in KINDS:
        (pattern, make), argv = KINDS[argv[0]], argv[1:]
    paths = [Path(p) for p in argv] or sorted(RESULTS.glob(pattern))
    if not paths:
        print(f"no {pattern} in {RESULTS}; run its benchmark first", file=sys.stderr)
        return 1
    print(make([json.loads(p.read_text()) for p in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

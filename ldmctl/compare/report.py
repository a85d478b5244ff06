"""The files ``ldmctl compare`` writes: results.json, PNG plots and report.md.

Everything is rendered from the results dict alone (what results.json holds), so the plots and
the Markdown of a finished comparison can be rebuilt from its JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmctl.eval.judge import METRICS, Metric
from ldmctl.eval.plots import Panel, Point, plot_panels
from ldmctl.eval.report import write_json
from ldmctl.files import atomic_write

SAMPLER_NAMES = {"ddim": "DDIM", "plms": "PLMS", "dpmpp": "DPM-Solver++", "ddpm": "DDPM"}


def _metrics(results: dict[str, Any]) -> list[Metric]:
    return [METRICS[m] for m in results["metrics"]]


def fmt(metric: Metric, value: float | None, std: float | None = None, *, signed: bool = False) -> str:
    """A value (± its std): percentages for rates, 4 significant digits otherwise (3 for ``signed``
    differences, which carry their sign)."""
    if value is None or value != value:
        return "n/a"
    rate = metric.key in ("acc", "shapes_match")
    sign = "+" if signed else ""
    text = f"{100 * value:{sign}.1f} %" if rate else (f"{value:+.3g}" if signed else f"{value:.4g}")
    if std is not None and std == std:
        text += f" ± {100 * std:.1f}" if rate else f" ± {std:.2g}"
    return text


def _sampler(name: str) -> str:
    return SAMPLER_NAMES.get(name, name)


def _header(results: dict[str, Any], title: str) -> list[str]:
    ref = results.get("reference_images") or {}
    lines = [f"# {title}", "", "```bash", results.get("command", ""), "```", ""]
    facts = [
        results.get("date", ""),
        f"{results.get('n', '?')} samples per measurement",
        f"guidance {results.get('guidance', '?')}",
    ]
    if ref:
        known = (
            f", classifier accuracy on them {fmt(METRICS['acc'], ref['acc_reference'])}"
            if "acc_reference" in ref
            else ""
        )
        facts.append(f"reference images `{ref['ref']}` ({ref['n_reference']}{known})")
    if results.get("threads"):
        facts.append(f"{results['threads']} CPU thread(s) ({results.get('device')}, {results.get('precision')})")
    lines += [" · ".join(f for f in facts if f), ""]
    lines += [
        f"- **{m.label}**: {m.about} ({'lower' if m.lower_is_better else 'higher'} is better)"
        for m in _metrics(results)
    ]
    return [*lines, ""]


# --------------------------------------------------------------------------------------------
# compare samplers


def write_samplers_report(results: dict[str, Any], out: Path, *, final: bool) -> None:
    """results.json, and when ``final`` also the plots and report.md."""
    if final:
        results["plots"] = samplers_plots(results, out)
        atomic_write(out / "report.md", lambda tmp: tmp.write_text(samplers_markdown(results)))
    write_json(results, out / "results.json")


def _main_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    seed = results["config"]["seed"]
    return [r for r in results["settings"] if r["seed"] == seed]


def samplers_plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """quality-vs-steps.png and quality-vs-time.png: one panel per metric, one line per sampler."""
    rows, match = _main_rows(results), results.get("match") or {}
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    steps = tuple(sorted({r["steps"] for r in rows}))
    by_steps, by_time = [], []
    for m in _metrics(results):

        def line(sampler: str, x: str, m: Metric = m) -> list[Point]:
            mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["steps"])
            if x == "steps":
                return [Point(r["steps"], r["values"][m.key], r["std"][m.key]) for r in mine]
            return [Point(r[x], r["values"][m.key], note=str(r["steps"])) for r in mine]  # bars: the steps plot

        band = None
        if match.get("metric") == m.key:
            low, high = sorted((match["value"], match["threshold"]))
            side = "+" if m.lower_is_better else "-"
            band = (low, high, f"{match['reference']} {side} {match['sigmas']:g}σ")
        ylabel = f"{m.label} ({'lower' if m.lower_is_better else 'higher'} is better)"
        by_steps.append(
            Panel(
                f"{m.label} vs sampling steps",
                "sampling steps",
                ylabel,
                {_sampler(s): line(s, "steps") for s in samplers},
                logx=True,
                xticks=steps,
                band=band,
            )
        )
        by_time.append(
            Panel(
                f"{m.label} vs sampling time",
                "seconds per image",
                ylabel,
                {_sampler(s): line(s, "seconds_per_image") for s in samplers},
                logx=True,
                band=band,
            )
        )
    plot_panels(by_steps, out / "quality-vs-steps.png")
    plot_panels(by_time, out / "quality-vs-time.png")
    return {"quality_vs_steps": "quality-vs-steps.png", "quality_vs_time": "quality-vs-time.png"}


def answer(results: dict[str, Any]) -> str:
    """One sentence per sampler: from which step count it matches the reference setting."""
    match = results["match"]
    metric = METRICS[results["metrics"][0]]
    rows = _main_rows(results)
    ref = match["reference"].rsplit("-", 1)
    ref_name = f"{_sampler(ref[0])}-{ref[1]}"
    parts = []
    for sampler, k in match["steps"].items():
        if k is None:
            tried = sorted(r["steps"] for r in rows if r["sampler"] == sampler)
            parts.append(f"**{_sampler(sampler)}** does not match {ref_name} at any step count tried ({tried})")
            continue
        row = next(r for r in rows if r["sampler"] == sampler and r["steps"] == k)
        fewest = " (the fewest tried)" if k == min(r["steps"] for r in rows if r["sampler"] == sampler) else ""
        parts.append(
            f"**{_sampler(sampler)} matches {ref_name} from {k} steps**{fewest} ({metric.label} "
            f"{fmt(metric, row['values'][metric.key], row['std'][metric.key])})"
        )
    return "; ".join(parts) + "."


def samplers_markdown(results: dict[str, Any]) -> str:
    """report.md of ``compare samplers``."""
    match, primary = results["match"], _metrics(results)[0]
    lines = _header(results, f"Sampler comparison: `{results.get('checkpoint', '')}`")
    lines += [
        "## Answer",
        "",
        answer(results),
        "",
        f"{match['reference']}: {primary.label} {fmt(primary, match['value'], match['std'])}. A setting "
        f"**matches** it when its {primary.label} is {'at most' if primary.lower_is_better else 'at least'} "
        f"**{fmt(primary, match['threshold'])}**, i.e. not worse than {match['reference']} by more than "
        f"{match['sigmas']:g} standard deviations ({fmt(primary, match['tolerance'])}); see below.",
        "",
    ]
    lines += [
        "## Results",
        "",
        _samplers_table(results),
        "",
        "![quality vs sampling steps](quality-vs-steps.png)",
        "",
        "![quality vs seconds per image](quality-vs-time.png)",
        "",
    ]
    lines += _noise_section(results)
    lines += _per_class_section(results)
    lines += _grids_section(results)
    return "\n".join(lines).rstrip() + "\n"


def _samplers_table(results: dict[str, Any]) -> str:
    metrics, match = _metrics(results), results["match"]
    primary = metrics[0]
    head = [
        "sampler",
        "steps",
        *[f"{m.label} ± σ" for m in metrics],
        f"paired Δ{primary.label} vs {match['reference']}",
        "s / image",
        f"matches {match['reference']}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in _main_rows(results):
        v = r["values"][match["metric"]]
        ok = v <= match["threshold"] if match["lower_is_better"] else v >= match["threshold"]
        paired = (r.get("paired") or {}).get(primary.key)
        delta = fmt(primary, paired["difference"], paired["std"], signed=True) if paired else "n/a"
        if f"{r['sampler']}-{r['steps']}" == match["reference"]:
            delta = "(reference)"
        cells = [
            _sampler(r["sampler"]),
            str(r["steps"]),
            *[fmt(m, r["values"][m.key], r["std"][m.key]) for m in metrics],
            delta,
            f"{r['seconds_per_image']:.3f}",
            "yes" if ok else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _noise_section(results: dict[str, Any]) -> list[str]:
    cfg, match, primary = results["config"], results["match"], _metrics(results)[0]
    lines = [
        '## How "matches" is defined',
        "",
        f"Every setting draws the same {results.get('n')} samples (seed {cfg['seed']}: the same initial noise, "
        "class labels and prompts), so settings differ only in the sampler and its step count. Each "
        f"figure's ± is its standard deviation over {cfg['bootstrap']} bootstrap resamples of those samples "
        "(drawn with replacement, the reference images fixed): how much the figure would move with other "
        f"seeds. A setting matches {match['reference']} when it is not worse by more than "
        f"{match['sigmas']:g} of {match['reference']}'s standard deviations — it lies inside the noise band "
        "drawn in the plots. Better always matches. The match column and the answer use "
        f"{primary.label}; seconds per image are the wall time of sampling and decoding only (not the "
        "metrics), on this machine, divided by the number of samples.",
        "",
        f"The paired Δ column is the same comparison with the seed noise removed: the difference to "
        f"{match['reference']}, its ± from resampling the same sample indices in both settings (sample i "
        "of every setting starts from the same noise and condition). It shows systematic differences "
        "smaller than the run-to-run noise; it does not decide matches.",
        "",
    ]
    rep = results.get("repeat")
    if rep:
        k = primary.key
        d, s = rep["difference"][k], match["std"]
        ratio = f" = {abs(d) / s:.2f} σ" if s and s == s else ""
        lines += [
            f"**Noise check.** {match['reference']} drawn again with seed {rep['seed']}: {primary.label} "
            f"{fmt(primary, rep['values'][k], rep['std'][k])}, a difference of {fmt(primary, d, signed=True)}{ratio} from "
            f"seed {cfg['seed']}. Two independent draws differ by about √2 σ on average "
            "if the bootstrap σ is right.",
            "",
        ]
    return lines


def _per_class_section(results: dict[str, Any]) -> list[str]:
    rows = [r for r in _main_rows(results) if r.get("per_class")]
    if not rows:
        return []
    classes = [c["class"] for c in rows[0]["per_class"]]
    head = ["class", *[f"{_sampler(r['sampler'])}-{r['steps']}" for r in rows]]
    lines = [
        "## Per class",
        "",
        "FD_cls of each class's samples against that class's reference images (not FID):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for i, name in enumerate(classes):
        cells = [name, *[fmt(METRICS["fd-cls"], r["per_class"][i].get("fd_cls")) for r in rows]]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _grids_section(results: dict[str, Any]) -> list[str]:
    rows = [r for r in _main_rows(results) if r.get("grid")]
    if not rows:
        return []
    lines = ["## Samples", ""]
    if results.get("overview"):
        order = ", ".join(f"{_sampler(r['sampler'])}-{r['steps']}" for r in rows)
        lines += [
            f"The first samples of every setting, one row each ({order}); same seed, so a column is the same "
            "initial noise and condition:",
            "",
            f"![overview]({results['overview']})",
            "",
        ]
    steps = sorted({r["steps"] for r in rows})
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    lines += ["| sampler | " + " | ".join(f"{k} steps" for k in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for s in samplers:
        cells = [
            next((f"![{s}-{k}]({r['grid']})" for r in rows if r["sampler"] == s and r["steps"] == k), "") for k in steps
        ]
        lines.append(f"| {_sampler(s)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


# --------------------------------------------------------------------------------------------
# compare train


def write_training_report(results: dict[str, Any], out: Path, *, final: bool) -> None:
    """results.json, and when ``final`` also the plots and report.md."""
    if final and any(v["points"] for v in results["variants"]):
        results["plots"] = training_plots(results, out)
        atomic_write(out / "report.md", lambda tmp: tmp.write_text(training_markdown(results)))
    write_json(results, out / "results.json")


def training_plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """quality-vs-train-steps.png and quality-vs-wall-time.png: one line per variant."""
    by_step, by_time = [], []
    for m in _metrics(results):
        ylabel = f"{m.label} ({'lower' if m.lower_is_better else 'higher'} is better)"

        def line(v: dict[str, Any], x: str, m: Metric = m) -> list[Point]:
            return [Point(p[x], p["values"][m.key], p["std"][m.key]) for p in v["points"]]

        by_step.append(
            Panel(
                f"{m.label} vs training steps",
                "training steps",
                ylabel,
                {v["name"]: line(v, "step") for v in results["variants"]},
            )
        )
        by_time.append(
            Panel(
                f"{m.label} vs training time",
                "training wall time (s)",
                ylabel,
                {v["name"]: line(v, "train_seconds") for v in results["variants"]},
            )
        )
    plot_panels(by_step, out / "quality-vs-train-steps.png")
    plot_panels(by_time, out / "quality-vs-wall-time.png")
    return {"quality_vs_train_steps": "quality-vs-train-steps.png", "quality_vs_wall_time": "quality-vs-wall-time.png"}


def _points_table(results: dict[str, Any], metrics: list[Metric], *, final: bool) -> list[str]:
    """A Markdown table of the evaluations of ``compare train``: each variant's last one
    (``final``, figures with their σ) or every one, with its grid."""
    labels = [f"{m.label} ± σ" if final else m.label for m in metrics]
    head = ["variant", "steps" if final else "step", "training wall time", *labels, *([] if final else ["grid"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in results["variants"]:
        for p in v["points"][-1:] if final else v["points"]:
            cells = [v["name"], str(p["step"]), f"{p['train_seconds']:.0f} s"]
            cells += [fmt(m, p["values"][m.key], p["std"][m.key]) for m in metrics]
            if not final:
                cells.append(f"[png]({p['grid']})" if p.get("grid") else "")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def training_markdown(results: dict[str, Any]) -> str:
    """report.md of ``compare train``."""
    metrics, s = _metrics(results), results["setting"]
    lines = _header(results, "Training comparison")
    lines += [
        f"Each variant trains with the same budget; its EMA weights are measured at every checkpoint with "
        f"{_sampler(s['sampler'])} {s['steps']} steps, seed {s['seed']} (the same noise and conditions for "
        "every variant and step). ± is the standard deviation over a bootstrap of the samples. Training "
        "wall time counts setup and steps, not the evaluations.",
        "",
        "## Final checkpoints",
        "",
    ]
    lines += _points_table(results, metrics, final=True)
    lines += [
        "",
        "![quality vs training steps](quality-vs-train-steps.png)",
        "",
        "![quality vs training wall time](quality-vs-wall-time.png)",
        "",
        "## Every evaluation",
        "",
    ]
    lines += _points_table(results, metrics, final=False)
    if results.get("overview"):
        names = ", ".join(v["name"] for v in results["variants"] if v["points"])
        lines += [
            "",
            "## Samples",
            "",
            f"Last checkpoint of each variant, one row each ({names}):",
            "",
            f"![overview]({results['overview']})",
        ]
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "SAMPLER_NAMES",
    "answer",
    "fmt",
    "samplers_markdown",
    "samplers_plots",
    "training_markdown",
    "training_plots",
    "write_samplers_report",
    "write_training_report",
]

"""Outputs of an evaluation run: metrics.json, a confusion matrix (CSV + PNG) per method, and report.md."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcmae.io.atomic import write_csv_atomic, write_text_atomic
from gcmae.scoring.metrics import HEADLINE_METRICS, write_confusion_csv
from gcmae.viz.confusion import plot_confusion_matrix

COLUMNS = tuple(HEADLINE_METRICS.items())


def json_safe(value: Any) -> Any:
    """`value` with every NaN / infinite float replaced by None, so that `json.dumps(..., allow_nan=False)` writes
    valid JSON (`null`, never the `NaN` token other readers reject)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps_json(payload: Any) -> str:
    """Valid JSON text (NaN/Inf as null), indented, with a final newline."""
    return json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per method, the headline metrics as columns."""
    lines = ["| method | " + " | ".join(title for _, title in COLUMNS) + " | n |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(key)) for key, _ in COLUMNS)
                     + f" | {m['num_samples']} |")
    return "\n".join(lines)


def per_class_table(metrics: dict[str, Any]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, c in metrics["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    return "\n".join(lines)


def console_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text version of `metrics_table` for the terminal."""
    head = f"{'method':<24}" + "".join(f"{title:>15}" for _, title in COLUMNS)
    rows = [f"{name:<24}" + "".join(f"{_fmt(m.get(key)):>15}" for key, _ in COLUMNS) for name, m in results.items()]
    return "\n".join([head, *rows])


def write_report(out_dir: Path, title: str, settings: dict[str, Any], results: dict[str, dict[str, Any]],
                 figures: list[tuple[str, str]], notes: list[str] = ()) -> Path:
    """report.md: settings, metrics table, per-class tables, and links to the PNGs (paths relative to out_dir)."""
    parts = [f"# {title}", ""]
    parts += [f"- **{k}**: `{v}`" for k, v in settings.items()]
    parts += [""] + [f"{n}" for n in notes] + ([""] if notes else [])
    if results:
        parts += ["## Metrics", "", metrics_table(results), "",
                  "AUC: binary ROC AUC of the second class for two classes, one-vs-rest macro AUC otherwise.", ""]
        for name, m in results.items():
            parts += [f"### {name}: per class", "", per_class_table(m), ""]
    if figures:
        parts += ["## Figures", ""]
        for caption, rel in figures:
            parts += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    return write_text_atomic(out_dir / "report.md", "\n".join(parts))


def write_predictions(path: str | Path, files: list[str], labels: torch.Tensor | np.ndarray, probs: np.ndarray,
                      classes: list[str]) -> Path:
    """One row per image: file, true label, predicted label (the most probable class), each class's probability."""
    labels = np.asarray(labels)
    if not len(files) == len(labels) == len(probs):
        raise ValueError(f"{len(files)} files, {len(labels)} labels and {len(probs)} probability rows")
    rows = ([f, classes[int(y)], classes[int(np.argmax(p))], *(f"{float(v):.6g}" for v in p)]
            for f, y, p in zip(files, labels, probs))
    return write_csv_atomic(path, ["file", "label", "predicted", *(f"prob_{c}" for c in classes)], rows)


def save_evaluation(out_dir: str | Path, command: str, title: str, settings: dict[str, Any],
                    results: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None,
                    figures: list[tuple[str, str]] = (), notes: list[str] = ()) -> Path:
    """Write metrics.json, confusion_<method>.csv/.png for every method, and report.md; returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used = (extra or {}).get("encoder_used") or {}  # options left to the checkpoint: the values they resolved to
    settings = {k: used.get(k, v) if v is None else v for k, v in settings.items()}
    all_figures = []
    for name, m in results.items():
        write_confusion_csv(out_dir / f"confusion_{name}.csv", m["confusion_matrix"], m["classes"])
        plot_confusion_matrix(m["confusion_matrix"], m["classes"], out_dir / f"confusion_{name}.png",
                              f"{title}: {name} (accuracy {m['accuracy']:.3f})")
        all_figures.append((f"confusion matrix, {name}", f"confusion_{name}.png"))
    payload = {"command": command, "settings": settings, "results": results, **(extra or {})}
    write_text_atomic(out_dir / "metrics.json", dumps_json(payload))
    write_report(out_dir, title, settings, results, [*all_figures, *figures], list(notes))
    return out_dir

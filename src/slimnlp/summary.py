"""The short human summary printed at the end of a run."""

from __future__ import annotations

from typing import Any

ROWS = (
    ("test accuracy", "test/acc", "teacher/test/acc", "{:.4f}"),
    ("test macro-F1", "test/f1", "teacher/test/f1", "{:.4f}"),
    ("test MCC", "test/mcc", "teacher/test/mcc", "{:.4f}"),
    ("validation accuracy", "val/acc", None, "{:.4f}"),
    ("parameters (M)", "eff/params", "teacher/eff/params", "{:.2f}"),
    ("latency ms (batch)", "eff/latency_ms", "teacher/eff/latency_ms", "{:.1f}"),
)


def format_summary(results: dict[str, Any]) -> str:
    m = results["metrics"]
    scale = {"eff/params": 1e-6, "teacher/eff/params": 1e-6}
    title = f"{results['technique']} · student {results['student']} · teacher {results['teacher']} · {results['task']}"
    lines = [title, f"{'':24}{'student':>12}{'teacher':>12}"]
    for label, key_S, key_T, fmt in ROWS:
        if key_S not in m:
            continue
        value_S = fmt.format(m[key_S] * scale.get(key_S, 1))
        value_T = fmt.format(m[key_T] * scale.get(key_T, 1)) if key_T and key_T in m else ""
        lines.append(f"{label:24}{value_S:>12}{value_T:>12}")
    for label, key, fmt in (
        ("majority class: test acc", "test/majority_acc", "{:.4f}"),
        ("speed-up (measured)", "eff/speedup", "{:.2f}x"),
        ("agreement with teacher", "fidelity/agreement", "{:.4f}"),
        ("run time (s)", "time/run_s", "{:.0f}"),
    ):
        if key in m:
            lines.append(f"{label:24}{fmt.format(m[key]):>12}")
    lines.extend(f"WARNING: {warning}" for warning in results.get("warnings", []))
    lines.append(f"run folder: {results['run_dir']}")
    return "\n".join(lines)


def print_summary(results: dict[str, Any]) -> None:
    print(format_summary(results), flush=True)

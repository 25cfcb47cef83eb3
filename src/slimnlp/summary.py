"""The short human summary printed at the end of a run."""

from __future__ import annotations

from typing import Any

ROWS = (  # label, student key, teacher key, format; rows whose student key is absent are left out
    ("test accuracy", "test/acc", "teacher/test/acc", "{:.4f}"),
    ("test macro-F1", "test/f1", "teacher/test/f1", "{:.4f}"),
    ("test MCC", "test/mcc", "teacher/test/mcc", "{:.4f}"),
    ("validation accuracy", "val/acc", None, "{:.4f}"),
    ("parameters (M)", "eff/params", "teacher/eff/params", "{:.2f}"),
    ("non-embedding (M)", "eff/params_nonembedding", "teacher/eff/params_nonembedding", "{:.2f}"),
    ("GFLOPs / example", "eff/flops", "teacher/eff/flops", "{:.3f}"),
    ("disk (MB)", "eff/disk_bytes", "teacher/eff/disk_bytes", "{:.1f}"),
    ("latency ms b1 (p50)", "eff/latency_ms_b1", "teacher/eff/latency_ms_b1", "{:.1f}"),
    ("latency ms b32 (p50)", "eff/latency_ms_b32", "teacher/eff/latency_ms_b32", "{:.1f}"),
    ("ONNX RT ms b32 (p50)", "eff/ort/latency_ms_b32", "teacher/eff/ort/latency_ms_b32", "{:.1f}"),
    ("peak memory (MB)", "eff/peak_mem_mb", "teacher/eff/peak_mem_mb", "{:.0f}"),
    ("kWh / 1k examples", "energy/infer_kwh_per_1k", "teacher/energy/infer_kwh_per_1k", "{:.2e}"),
    ("typo attack: acc", "robust/typo/acc", "teacher/robust/typo/acc", "{:.4f}"),
    ("word attack: acc", "robust/word/acc", "teacher/robust/word/acc", "{:.4f}"),
)
SCALE = {"params": 1e-6, "params_nonembedding": 1e-6, "flops": 1e-9, "disk_bytes": 1e-6}


def _is_ood_acc(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "ood" and parts[2] == "acc"


def format_summary(results: dict[str, Any]) -> str:
    m = results["metrics"]
    title = f"{results['technique']} · student {results['student']} · teacher {results['teacher']} · {results['task']}"
    lines = [title, f"{'':24}{'student':>12}{'teacher':>12}"]
    ood = [(f"OOD {k.split('/')[1]}: acc", k, f"teacher/{k}", "{:.4f}") for k in sorted(m) if _is_ood_acc(k)]
    for label, key_S, key_T, fmt in (*ROWS, *ood):
        if key_S not in m:
            continue
        factor = SCALE.get(key_S.rpartition("/")[2], 1)
        value_S = fmt.format(m[key_S] * factor)
        value_T = fmt.format(m[key_T] * factor) if key_T and key_T in m else ""
        lines.append(f"{label:24}{value_S:>12}{value_T:>12}")
    for label, key, fmt in (
        ("majority class: test acc", "test/majority_acc", "{:.4f}"),
        ("speed-up b1 (measured)", "eff/speedup_b1", "{:.2f}x"),
        ("speed-up b32 (measured)", "eff/speedup_b32", "{:.2f}x"),
        ("agreement with teacher", "fidelity/agreement", "{:.4f}"),
        ("probability loyalty", "fidelity/prob_loyalty", "{:.4f}"),
        ("KL(teacher || student)", "fidelity/kl", "{:.4f}"),
        ("training energy (kWh)", "energy/train_kwh", "{:.2e}"),
        ("run time (s)", "time/run_s", "{:.0f}"),
    ):
        if key in m:
            lines.append(f"{label:24}{fmt.format(m[key]):>12}")
    lines.extend(f"WARNING: {warning}" for warning in results.get("warnings", []))
    lines.append(f"run folder: {results['run_dir']}")
    return "\n".join(lines)


def print_summary(results: dict[str, Any]) -> None:
    print(format_summary(results), flush=True)

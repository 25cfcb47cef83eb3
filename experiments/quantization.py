"""The quantization table on the embedded default (4,000 tweets, the fine-tuned MiniLM-L6 as fp32 model and
teacher): dynamic INT8 with both backends, QAT at 8, 4 and 2 bits against round-to-nearest at 4 and 2, TernaryBERT,
BinaryBERT (and its plain-BWN baseline) and GOBO, every trained cell with the same budget (``trainer.max_epochs`` of the default, 2, at the default LR; BinaryBERT and its BWN baseline
twice that, the ternary training plus as many binary steps) and starting from the same fine-tuned model.

    python experiments/quantization.py [--cells NAME ...] [--list] [--report-only]

Every cell is one plain run, ``python train.py student=6L student.init_from=finetuned technique=<t> <overrides>
seed=<seed> <COMMON>``; three seeds for qat-8, qat-4, ternary and binary, one elsewhere (post-training cells are
deterministic: no seed changes them). ``COMMON`` drops the robustness attacks and the energy meter, which the
table does not show, from every cell alike; ``measure.runtimes=[torch,onnxruntime]`` stays the default.
Latencies in the cells are measured inside each run, on a machine that may be running other jobs; the
README's speed-ups come from ``benchmarks/quantization_latency.py``, which times the saved artifacts side by
side in one quiet process.

Each finished cell's ``results.json`` is copied into ``experiments/quantization/cells/<cell>/`` (committed: run
folders under ``outputs/`` do not outlive a machine) and a cell found there is never re-run, so the table can
fill over several sessions; the report goes to ``experiments/quantization/``.
"""

from __future__ import annotations

from kept_cells import main

COMMON = ["student=6L", "student.init_from=finetuned", "eval.robustness.attacks=[]", "energy.enabled=false",
          "trainer.enable_progress_bar=false"]
GROUP_BY = "technique,technique.backend,technique.bits,technique.granularity,technique.targets,technique.split"
COLUMNS = ("test/acc,test/f1,fidelity/agreement,eff/disk_bytes,compress/quantized_weight_compression,"
           "eff/latency_ms_b1,eff/latency_ms_b32,eff/speedup_b32")
SETTINGS = {  # cell name prefix -> overrides, seeds
    "ptq_torch_ao": (["technique=ptq_dynamic", "technique.backend=torch_ao"], (42,)),
    "ptq_torchao": (["technique=ptq_dynamic", "technique.backend=torchao"], (42,)),
    "ptq_torch_ao_emb": (["technique=ptq_dynamic", "technique.backend=torch_ao",
                          "technique.targets=[encoder,embeddings]"], (42,)),
    "gobo": (["technique=gobo"], (42,)),
    "rtn4": (["technique=ptq_weight", "technique.bits=4"], (42,)),  # qat4's settings, untrained
    "rtn2_group": (["technique=ptq_weight", "technique.bits=2", "technique.granularity=group",
                    "technique.group_size=128"], (42,)),
    "qat8": (["technique=qat", "technique.bits=8"], (0, 1, 2)),
    "qat4": (["technique=qat", "technique.bits=4"], (0, 1, 2)),
    "ternary": (["technique=ternary"], (0, 1, 2)),
    "qat2_group": (["technique=qat", "technique.bits=2", "technique.granularity=group",
                    "technique.group_size=128"], (0,)),
    # BinaryBERT with joint KD at the run's LR: min_steps=250 raises each 1-epoch stage to 2 epochs, so it is the
    # ternary cell's whole training (250 steps) plus 250 binary steps after the split; its baseline, the
    # fine-tuned weights binarized directly (BWN, 1 bit per weight), gets the same 500 steps
    "binary": (["technique=binary", "technique.kd=joint", "technique.ternary_epochs=1", "technique.binary_epochs=1",
                "technique.ternary_lr=null", "technique.binary_lr=null"], (0, 1, 2)),
    "bwn": (["technique=binary", "technique.split=false", "technique.kd=joint", "technique.binary_epochs=4",
             "technique.binary_lr=null"], (0,)),
}


def cells() -> dict[str, list[str]]:
    return {f"{name}_s{seed}": [*overrides, f"seed={seed}"]
            for name, (overrides, seeds) in SETTINGS.items() for seed in seeds}


if __name__ == "__main__":
    main(__doc__.splitlines()[0], cells(), COMMON, "quantization", GROUP_BY, COLUMNS)

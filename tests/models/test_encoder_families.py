"""Encoder families (``models.family``, ``pretrained.FAMILIES``): config.json's model_type picks the
family; BERT is one row, and a second family is one more row (here a copy of BERT's under another
name, which must load the same model and give the same embeddings)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from _cli import model_dir_copy

from selfattention.errors import ModelError
from selfattention.models import bert, pretrained
from selfattention.models.bert import BertConfig
from selfattention.models.pretrained import PretrainedModel, default_model_path


def _config(**fields: object) -> str:
    return json.dumps({**json.loads((default_model_path() / "config.json").read_text()), **fields})


def test_bert_is_the_default_family():
    assert pretrained.FAMILIES["bert"] is bert.FAMILY and pretrained.DEFAULT_FAMILY == "bert"
    assert PretrainedModel().family is bert.FAMILY


@pytest.mark.slow
def test_a_second_family_is_one_row(tmp_path, monkeypatch):
    copy = dataclasses.replace(bert.FAMILY, name="bert-copy",
                               config=lambda raw, source: BertConfig.from_dict({**raw, "model_type": "bert"},
                                                                               source))
    monkeypatch.setitem(pretrained.FAMILIES, "bert-copy", copy)
    folder = model_dir_copy(tmp_path, replace={"config.json": _config(model_type="bert-copy")})
    m = PretrainedModel(folder)
    assert m.family is copy and m.describe()["layers"] == 6
    texts = ["I am enjoying this lecture", "The talk was fun"]
    np.testing.assert_array_equal(m.embed(texts), PretrainedModel().embed(texts))  # the same model, run alike


def test_an_unknown_family_is_named(tmp_path):
    folder = model_dir_copy(tmp_path, replace={"config.json": _config(model_type="gpt2")})
    with pytest.raises(ModelError, match=r"config\.json: model_type 'gpt2' is not supported; this encoder "
                                         r"runs 'bert'"):
        PretrainedModel(folder)

"""The synthetic tasks: answers, held-out split, batches, and the text file reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfattention.errors import InputError
from selfattention.train.config import TrainConfig
from selfattention.train.data import SyntheticData, TextData, encode_batch
from selfattention.train.tasks import SYNTHETIC, TASKS, Vocabulary, get_task, heldout_prompts, train_prompts
from selfattention.train.text import read_text


@pytest.mark.parametrize("task, prompt, answer", [
    ("copy", "hello", "hello"), ("reverse", "hello", "olleh"), ("sort", "hello", "ehllo"),
    ("recall", "a1b7c3?b", "7"), ("recall", "z0?z", "0"),
])
def test_answers(task: str, prompt: str, answer: str):
    assert TASKS[task].solve(prompt) == answer
    sep = "" if task == "recall" else "="  # recall's answer follows the query key at once
    assert TASKS[task].sequence(prompt) == f"{prompt}{sep}{answer}."


@pytest.mark.parametrize("name", SYNTHETIC)
def test_drawn_prompts_have_the_asked_length_and_symbols(name: str):
    task = TASKS[name]
    rng = np.random.default_rng(0)
    for n in (1, 5, 16):
        p = task.draw(rng, n)
        if name == "recall":
            body, _, key = p.partition("?")
            assert len(body) == 2 * n and key in body[0::2] and len(set(body[0::2])) == n
        else:
            assert len(p) == n
        task.vocab.encode(task.sequence(p))  # every symbol is in the vocabulary


@pytest.mark.parametrize("name", SYNTHETIC)
def test_training_never_sees_a_held_out_prompt(name: str):
    task = TASKS[name]
    lo, hi = (1, 8) if name == "recall" else (1, 16)
    train = train_prompts(task, np.random.default_rng(1), 4000, lo, hi)
    held = heldout_prompts(task, np.random.default_rng(2), 500, lo, hi)
    assert not any(task.held_out(p) for p in train)
    assert all(task.held_out(p) for p in held)
    assert not set(train) & set(held)
    # about 1/16 of all prompts are held out: 4000 draws would almost surely hit some
    rng = np.random.default_rng(3)
    draws = [task.draw(rng, 10) for _ in range(4000)]
    assert 150 < sum(task.held_out(p) for p in draws) < 350
    # every training length occurs among the held-out prompts (length 1 has 26 prompts, ~2 held out)
    lengths = {len(p) if name != "recall" else len(p.partition("?")[0]) // 2 for p in held}
    assert lengths == set(range(lo, hi + 1))


def test_batches_count_only_the_answer_and_its_end():
    task = get_task("reverse")
    b = encode_batch(task, ["abc", "a"])
    v = task.vocab
    assert v.decode(b.inputs[0].tolist()) == "abc=cba"
    assert v.decode(b.targets[0].tolist()) == "bc=cba."
    assert b.weight[0].tolist() == [False, False, False, True, True, True, True]  # c, b, a, "."
    assert v.decode(b.targets[1][b.weight[1]].tolist()) == "a."
    assert b.weight[1].sum() == 2
    recall = get_task("recall")
    r = encode_batch(recall, ["a1b7?b"])
    assert recall.vocab.decode(r.targets[0][r.weight[0]].tolist()) == "7."
    assert "=" not in recall.vocab.tokens


def test_a_steps_batch_is_the_same_every_time_and_split_over_processes():
    data = SyntheticData(TrainConfig(task="sort", batch_size=8))
    whole, n = data.train_batch(7)
    again, _ = data.train_batch(7)
    assert torch.equal(whole.inputs, again.inputs)
    assert n == int(whole.weight.sum())
    halves = [data.train_batch(7, rank, 2) for rank in (0, 1)]
    assert all(tokens == n for _, tokens in halves)
    assert sum(len(b) for b, _ in halves) == 8
    other, _ = data.train_batch(8)
    assert not torch.equal(whole.inputs[:, :3], other.inputs[:, :3])


def test_vocabulary_names_an_unknown_character():
    v = Vocabulary("abc")
    assert v.decode(v.encode("cab")) == "cab"
    with pytest.raises(InputError, match="'z' is not in this model's vocabulary"):
        v.encode("abz")
    with pytest.raises(ValueError):
        Vocabulary(["a", "a"])


def test_text_data_holds_out_the_end(tmp_path):
    text = "the cat sat on the mat. " * 40
    data = TextData(TrainConfig(task="text", context=16, eval_size=4, batch_size=32), text)
    assert "".join(data.vocab.tokens) == "".join(sorted(set(text)))
    assert len(data.train_ids) == int(len(text) * 0.9)
    b, n = data.train_batch(1)
    assert b.inputs.shape == (32, 16) and n == 32 * 16
    assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    assert data.eval_batches()["heldout"].inputs.shape == (4, 16)
    tiny = TextData(TrainConfig(task="text", context=16, batch_size=32), "ab")
    assert not tiny.held_out and tiny.train_batch(1)[0].inputs.shape == (32, 1)


def test_read_text_accepts_utf8_and_drops_a_bom(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffgrüße".encode())
    text, sha = read_text(p)
    assert text == "grüße" and len(sha) == 64


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (b"", "the file is empty"), (b"ab\x00cd", "looks binary .*offset 2"),
    (b"caf\xe9 ok", "not UTF-8 .*0xe9 at offset 3"), (b"x", "too short"),
])
def test_read_text_refuses_bad_files_in_one_line(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_text(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="is a directory"):
        read_text(tmp_path)

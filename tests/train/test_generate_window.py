"""Generation past the model's positions (issue 17, items 6 and 7): one window rule for the KV cache
and for ``--no-cache``, held equal token for token past the context; a prompt longer than the
positions is cut at its start with a warning saying how much, never silently.

The rule (``transformer.restart_window``): the context grows up to max_len and, when one more token
would pass it, restarts from its last max(1, max_len // 2) tokens. It is rebuilt here from that
sentence, not from the code. Equality of the two paths is exact (the tokens): the models are
float64, where the cached and recomputed logits differ by round-off (~1e-15), far below any gap
between two logits that decides a token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _train_helpers import TINY_ARGS, one_thread  # noqa: F401

from selfattention.cli import main
from selfattention.transformer import DecoderLM, TransformerConfig, generate

TINY = [*TINY_ARGS, "--checkpoint-every", "2", "--eval-every", "2"]
WIDTH = 100  # a warning line's columns at most


def _model(positions: str, max_len: int, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    lm = DecoderLM(TransformerConfig(vocab_size=13, d_model=16, num_heads=2, num_layers=2, d_ff=32,
                                     max_len=max_len, positions=positions)).double().eval()
    with torch.no_grad():  # larger weights: every token depends on its context, so a wrong one shows
        for p in lm.parameters():
            p.mul_(4.0)
    return lm


def _windows(prompt: list[int], made: list[int], max_len: int | None) -> list[list[int]]:
    """What the model must read before each generated token, by the documented rule."""
    context = prompt[-max_len:] if max_len else list(prompt)
    want = []
    for token in made:
        if max_len and len(context) > max_len:
            context = context[-max(1, max_len // 2):]
        want.append(list(context))
        context = context + [token]
    return want


def _spy(lm: DecoderLM, seen: list[list[int]]):
    """Record, for each forward, the whole sequence the model reads (the cache's tokens + the new)."""
    forward = lm.forward

    def spy(x, caches=None, **kw):
        before = len(caches[0]) if caches is not None else 0
        seen.append((seen[-1] if before else []) + x[0].tolist())
        assert len(seen[-1]) == before + x.shape[1]  # the cache holds exactly what was read before
        return forward(x, caches=caches, **kw)

    lm.forward = spy


def _sample(temperature: float, seed: int) -> dict:
    return {"temperature": temperature, "generator": torch.Generator().manual_seed(seed)}


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("max_len, prompt_len", [(10, 3), (7, 12), (1, 2), (2, 1)])
def test_cache_and_no_cache_read_the_same_window_past_the_context(positions, temperature, max_len,
                                                                   prompt_len):
    lm = _model(positions, max_len, seed=max_len)
    prompt = torch.randint(0, 13, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    seen: dict[bool, list[list[int]]] = {True: [], False: []}
    out = {}
    for cache in (True, False):
        _spy(lm, seen[cache])
        out[cache] = generate(lm, prompt, 5 * max_len + 6, use_cache=cache, **_sample(temperature, 3))
        del lm.forward
    assert torch.equal(out[True], out[False])  # token for token, well past the context
    made = out[True][0, prompt_len:].tolist()
    want = _windows(prompt[0].tolist(), made, max_len if positions != "none" else None)
    assert seen[True] == seen[False] == want
    if positions != "none":
        assert max(map(len, want)) == max_len  # the context was reached and passed
    # Each token is what the model gives on that window computed whole (greedy: its argmax).
    if temperature == 0:
        for k in range(0, len(made), 7):
            assert made[k] == int(lm(torch.tensor([want[k]]))[0, -1].argmax())


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_a_batch_with_a_stop_token_is_the_same_with_and_without_the_cache(positions):
    lm = _model(positions, 6, seed=5)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]])
    for temperature in (0.0, 0.7):
        fast = generate(lm, prompt, 40, stop=9, **_sample(temperature, 1))
        slow = generate(lm, prompt, 40, stop=9, use_cache=False, **_sample(temperature, 1))
        assert torch.equal(fast, slow)


# The command line ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory) -> Path:
    """A tiny reverse model: max_len 6, longer_len 8, so 2 · 8 + 2 = 18 positions."""
    out = tmp_path_factory.mktemp("window") / "run"
    torch.set_num_threads(1)
    assert main(["train", "reverse", "--steps", "4", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A text model with --context 32, the issue's case."""
    d = tmp_path_factory.mktemp("window-text")
    (d / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out = d / "run"
    assert main(["train", "text", "--text", str(d / "t.txt"), "--steps", "4", "--out", str(out),
                 "--context", "32", *TINY]) == 0
    return out


def _generate(capsys, run: Path, prompt: str, *args: str) -> tuple[str, str]:
    assert main(["generate", str(run), "--prompt", prompt, *args]) == 0
    out, err = capsys.readouterr()
    return out, err


@pytest.mark.parametrize("args", [[], ["--temperature", "0"], ["--temperature", "1.5", "--seed", "7"]])
def test_generate_with_and_without_no_cache_agree_past_the_context(capsys, text_run, args):
    for prompt in ("the ", "the quick brown fox jumps over the lazy dog. the"):  # 4 and 48 characters
        fast, _ = _generate(capsys, text_run, prompt, "--max-new", "150", *args)
        slow, _ = _generate(capsys, text_run, prompt, "--max-new", "150", "--no-cache", *args)
        assert len(fast.rstrip("\n")) == len(prompt) + 150
        assert fast == slow


def test_a_task_model_says_how_much_of_a_long_prompt_it_dropped(capsys, reverse_run):
    tail = "abcdefghijklmnopq"  # 17 letters + "=": the model's 18 positions exactly
    short, err = _generate(capsys, reverse_run, tail, "--max-new", "3")
    assert "dropped" not in err
    for head in ("xyzzyxzyxzy", "aaaaaaaaaaa", "m"):  # 11 (the case), again 11, then 1
        answer, err = _generate(capsys, reverse_run, head + tail, "--max-new", "3")
        assert answer == short  # the answer stays that of what the model read ...
        lines = [w for w in err.splitlines() if "dropped" in w]
        assert lines == [f"selfattention: warning: --prompt: dropped its first {len(head)} characters "
                         "(the model has 18 positions)"], err  # ... and says what it did not read
        assert len(lines[0]) <= WIDTH


def test_a_text_model_says_how_much_of_a_long_prompt_it_dropped(capsys, text_run):
    prompt = "the quick brown fox jumps over the lazy dog. the quick"  # 54 characters, 32 positions
    out, err = _generate(capsys, text_run, prompt, "--max-new", "5", "--seed", "2")
    assert out.startswith(prompt)  # the whole prompt is still printed before its continuation
    assert err.splitlines()[-1] == ("selfattention: warning: --prompt: dropped its first 22 characters "
                                    "(the model has 32 positions)"), err
    same, _ = _generate(capsys, text_run, prompt[22:], "--max-new", "5", "--seed", "2")
    assert out[len(prompt):] == same[len(prompt) - 22:]
    _, err = _generate(capsys, text_run, prompt[22:], "--max-new", "5")
    assert "warning" not in err  # exactly the positions: nothing dropped, nothing said


def test_a_gru_reads_the_whole_prompt_and_says_nothing(capsys, tmp_path):
    out = tmp_path / "gru"
    assert main(["train", "reverse", "--model", "gru", "--steps", "2", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    _, err = _generate(capsys, out, "abcdefghijklmnopqrstuvwxyz" * 2, "--max-new", "3")
    assert "dropped" not in err, err

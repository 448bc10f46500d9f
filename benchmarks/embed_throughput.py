"""Sentence-embedding throughput on the CPU: our encoder against transformers (and sentence-transformers).

Issue 3's target: sentences per second, batches of 32 sentences of about 12 words, at least 1.0× that
of transformers (or sentence-transformers) running the same all-MiniLM-L6-v2 on the same machine,
measured side by side in one run. Every contestant embeds the same deterministic list of sentences
(10–14 words each), sorted by length and cut into batches of 32 as sentence-transformers does, then
mean-pools and L2-normalizes; tokenization is included in every time. Rounds alternate between the
contestants so drift on a shared machine hits all alike; the table gives medians and the median of
per-round ratios.

    python benchmarks/embed_throughput.py [--sentences 512] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, median_ratio  # noqa: E402

from selfattention.models.pretrained import PretrainedModel, default_model_path  # noqa: E402

SUBJECTS = ["the student", "my neighbour", "a tired chef", "the old engine", "our small team", "the river",
            "every model", "a curious child", "the lecturer", "this quiet town", "the new phone", "a red fox"]
VERBS = ["reads", "watches", "builds", "remembers", "carries", "explains", "paints", "repairs", "finds",
         "follows", "describes", "forgets"]
OBJECTS = ["a long book about attention", "the evening news", "an unusual wooden table",
           "every word in the sentence", "the broken window", "a song from last summer",
           "the questions on the board", "three letters from home", "a map of the old city",
           "the weights of the network", "a recipe for bread", "the lights along the bridge"]
TAILS = ["before dinner", "with great care", "in the rain", "after a long day", "without a word",
         "at the station", "for the second time", "near the harbour", "late at night", "quite slowly"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """n varied sentences of 10–14 words, the same for every run."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        parts = (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS))
        words = " ".join(parts).split()
        if 10 <= len(words) <= 14:
            out.append(" ".join(words).capitalize() + ".")
    return out


def _length_sorted_batches(texts: list[str], size: int) -> list[list[int]]:
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as sentence-transformers
    return [order[i : i + size] for i in range(0, len(order), size)]


def transformers_embedder(texts: list[str], batch_size: int):
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = default_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertModel.from_pretrained(path).eval()  # default attention: sdpa
    batches = _length_sorted_batches(texts, batch_size)

    @torch.inference_mode()
    def run() -> np.ndarray:
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        for idx in batches:
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state  # (B, T, D)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            mean = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (B, D)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out

    name = f"transformers {transformers.__version__} BertModel ({model.config._attn_implementation})"
    return name, run


def sentence_transformers_embedder(texts: list[str], batch_size: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    return "sentence-transformers", lambda: model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = sentences(args.sentences)
    ours = PretrainedModel()
    contestants = {"selfattention (backend auto)": lambda: ours.embed(texts, batch_size=args.batch_size)}
    notes = []
    try:
        name, fn = transformers_embedder(texts, args.batch_size)
        contestants[name] = fn
    except ImportError:
        notes.append("transformers: not installed, not measured")
    try:
        name, fn = sentence_transformers_embedder(texts, args.batch_size)
        contestants[name] = fn
    except ImportError:
        notes.append("sentence-transformers: not installed (deliberately not installed here), not measured")

    # every contestant must compute the same embeddings before its speed means anything
    results = {name: np.asarray(fn()) for name, fn in contestants.items()}
    ref = results[next(iter(results))]
    for name, r in results.items():
        notes.append(f"{name}: max |embedding − ours| = {np.abs(r - ref).max():.2g}")

    times = interleaved(contestants, rounds=args.rounds, warmup=1)
    names = list(contestants)
    words = [len(t.split()) for t in texts]
    pieces = [len(ours.tokenizer.encode(t).ids) for t in texts]
    print(f"{len(texts)} sentences of {min(words)}–{max(words)} words (mean {statistics.mean(words):.1f}; "
          f"{statistics.mean(pieces):.1f} word pieces with [CLS]/[SEP]), batches of {args.batch_size}, "
          f"{args.rounds} interleaved rounds, float32")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, {platform.python_version()}, "
          f"torch {torch.__version__}\n")
    print("| implementation | median s per round | sentences/s (median) | median ratio ours/this |")
    print("|---|---:|---:|---:|")
    for name in names:
        med = statistics.median(times[name])
        ratio = median_ratio(times[name], times[names[0]])  # this time / our time = our speed-up
        print(f"| {name} | {med:.3f} | {len(texts) / med:.0f} | {ratio:.3f} |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()

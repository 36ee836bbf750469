"""Where wikitext2's time goes, and its floor. Every wikitext2 request is a 1,024-token window
whose every position is scored, so lm-eval and gpt2cli compute the same matrix products; what
differs is the rest. Timed, interleaved, per window:

- lm-eval's pass: transformers' GPT2LMHeadModel on a batch of 8 windows (its batch size),
  all logits;
- gpt2cli's pass: the torch backend's scoring pass (`plain_forward`, one window at a time as
  `scoring.MAX_LOGIT_ROWS` allows), all logits;
- the floor: the same window's matrix products alone (the four per layer and the vocabulary
  projection, at their real shapes), plus causal attention (torch's fused kernel).

Then the budget: 1.5x lm-eval's wall time over the shared file's windows, per window.

Run:  .venv/bin/python bench/eval_forward.py [--lm-eval-seconds 496.2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import sys

from common import WIKITEXT, ensure_models, interleaved, log, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm-eval-seconds", type=float, default=496.2,
                        help="lm-eval's wikitext2 wall time from bench_eval.py")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="turns per case (best is kept)")
    args = parser.parse_args()
    if not WIKITEXT.is_file():
        log(f"skipped: {WIKITEXT} is absent (see ../shared/data/README.md)")
        return 0
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel

    from gpt2cli.evaluation.data import read_local
    from gpt2cli.evaluation.detokenize import wikitext
    from gpt2cli.loader import load_backend
    from gpt2cli.tokenizer import GPT2Tokenizer

    torch.set_num_threads(2)
    pages = read_local(str(WIKITEXT), "wikitext", "page")
    tokenizer = GPT2Tokenizer()
    counts = [len(tokenizer.encode(wikitext(page))) for page in pages]
    windows = sum(math.ceil(n / 1024) for n in counts)
    model_dir = ensure_models(["torch"])["torch"]
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    backend = load_backend(str(model_dir), "torch")
    config = model.config
    width, heads, length = config.n_embd, config.n_head, 1024
    batch8 = torch.randint(0, config.vocab_size, (8, length))
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, length))
    ones, positions = np.ones_like(ids), np.arange(length)[None]
    x = torch.randn(length, width)
    hidden = torch.randn(length, 4 * width)
    weights = [torch.randn(width, n) for n in (3 * width, width, 4 * width)]
    down = torch.randn(4 * width, width)
    head = torch.randn(config.vocab_size, width)
    q, k, v = (torch.randn(1, heads, length, width // heads) for _ in range(3))

    def matrix_products() -> None:
        for _ in range(config.n_layer):
            for weight in weights:
                torch.mm(x, weight)
            torch.mm(hidden, down)
        x @ head.t()

    def attention() -> None:
        for _ in range(config.n_layer):
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    cases = {
        "lm-eval": lambda: model(batch8),
        "gpt2cli": lambda: backend.forward(ids, ones, positions, logits=length, use_cache=False),
        "matrix products": matrix_products,
        "attention": attention,
    }
    with torch.inference_mode():
        times, _ = interleaved(args.rounds, cases)
    times["lm-eval"] /= 8
    flops = 2 * length * config.n_layer * 12 * width * width + 2 * length * width * 50257
    floor = times["matrix products"] + times["attention"]
    budget = args.lm_eval_seconds / 1.5 / windows
    print(f"# {machine()}; {len(pages)} articles, {sum(counts)} tokens, {windows} windows")
    print("seconds per 1,024-token window:")
    print(f"  lm-eval's pass (transformers, batch 8)    {times['lm-eval']:.3f}")
    print(f"  gpt2cli's scoring pass (batch 1)          {times['gpt2cli']:.3f}  "
          f"({times['lm-eval'] / times['gpt2cli']:.2f}x)")  # fmt: skip
    print(f"  matrix products alone                     {times['matrix products']:.3f}  "
          f"({flops / times['matrix products'] / 1e9:.0f} GFLOPS)")  # fmt: skip
    print(f"  causal attention alone                    {times['attention']:.3f}")
    print(f"  floor (products + attention)              {floor:.3f}  "
          f"({times['lm-eval'] / floor:.2f}x lm-eval's pass)")  # fmt: skip
    print(f"1.5x lm-eval's {args.lm_eval_seconds:.1f} s over {windows} windows needs "
          f"{budget:.3f} s a window, everything included")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

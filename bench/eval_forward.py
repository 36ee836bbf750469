"""Where wikitext2's time goes: transformers' GPT-2 forward pass on batches of 8 windows of 1,024
tokens (the shape of lm-eval's and gpt2cli's wikitext2 requests), whole, without the vocabulary
projection, and with torch's one-kernel tanh GELU in place of `gelu_new`; the GEMM rate of one
8,192-row matrix product; and the forward time for all of the shared file's windows against the
1.5x-lm-eval budget.

Run:  .venv/bin/python bench/eval_forward.py [--lm-eval-seconds 496.2]
"""

from __future__ import annotations

import argparse
import math
import sys

from common import WIKITEXT, best_of, ensure_models, log, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm-eval-seconds", type=float, default=496.2,
                        help="lm-eval's wikitext2 wall time from bench_eval.py")  # fmt: skip
    args = parser.parse_args()
    if not WIKITEXT.is_file():
        log(f"skipped: {WIKITEXT} is absent (see ../shared/data/README.md)")
        return 0
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.activations import ACT2FN

    from gpt2cli.evaluation.data import read_local
    from gpt2cli.evaluation.detokenize import wikitext
    from gpt2cli.tokenizer import GPT2Tokenizer

    torch.set_num_threads(2)
    pages = read_local(str(WIKITEXT), "wikitext", "page")
    tokenizer = GPT2Tokenizer()
    counts = [len(tokenizer.encode(wikitext(page))) for page in pages]
    windows = sum(math.ceil(n / 1024) for n in counts)
    model_dir = ensure_models(["torch"])["torch"]
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    ids = torch.randint(0, model.config.vocab_size, (8, 1024))
    with torch.inference_mode():
        whole = best_of(2, lambda: model(ids))[0] / 8
        body = best_of(2, lambda: model.transformer(ids))[0] / 8
        for block in model.transformer.h:
            block.mlp.act = ACT2FN["gelu_pytorch_tanh"]
        fused = best_of(2, lambda: model(ids))[0] / 8
        x, w = torch.randn(8192, 768), torch.randn(3072, 768)
        gemm = best_of(5, lambda: torch.nn.functional.linear(x, w))[0]
    print(f"# {machine()}; {len(pages)} articles, {sum(counts)} tokens, {windows} windows")
    print(f"forward per 1,024-token window (batch 8): {whole:.3f} s; without the vocabulary "
          f"projection {body:.3f} s; with one-kernel GELU {fused:.3f} s")  # fmt: skip
    print(f"GEMM 8192x768x3072: {2 * 8192 * 768 * 3072 / gemm / 1e9:.0f} GFLOPS")
    budget = args.lm_eval_seconds / 1.5
    print(f"all windows: {windows * whole:.0f} s ({windows * fused:.0f} s with one-kernel GELU); "
          f"1.5x lm-eval's {args.lm_eval_seconds:.1f} s needs {budget:.0f} s, "
          f"{budget / windows:.2f} s a window")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`gpt2cli eval`'s engine: the GPT-2 paper's zero-shot tasks with lm-evaluation-harness's
definitions (tasks), their data (data), detokenizers (detokenize) and metrics (metrics)."""

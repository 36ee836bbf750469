"""gpt2cli: a fast, scriptable command-line tool for the GPT-2 model family."""

__version__ = "0.1.0"

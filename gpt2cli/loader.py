"""Finding a model: a local directory or a Hugging Face Hub id, resolved through the Hub cache."""

from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import ModelError

TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
]


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model_dir(model: str, patterns: list[str] | None = None) -> Path:
    """A local directory holding `model`'s files, downloading from the Hub when needed.

    Respects HF_HOME and HF_HUB_OFFLINE; a model that is neither cached nor reachable is one
    clear error (exit 1), not a retry loop.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{model}: is a file; --model takes a directory or a Hub id")
    if _looks_like_path(model):
        raise ModelError(f"{model}: no such model directory")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(model, allow_patterns=patterns))
    except HFValidationError:
        raise ModelError(f"{model}: not a directory, and not a valid Hub model id") from None
    except GatedRepoError:
        raise ModelError(f"{model}: gated on the Hub; log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{model}: no such model on the Hugging Face Hub") from None
    except RevisionNotFoundError:
        raise ModelError(f"{model}: no such revision on the Hub") from None
    except LocalEntryNotFoundError:
        raise ModelError(
            f"{model}: not in the local Hub cache and the Hugging Face Hub cannot be reached "
            "(check the network, HF_HOME, or HF_HUB_OFFLINE)"
        ) from None
    except OSError as exc:
        raise ModelError(f"{model}: download failed: {exc}") from None

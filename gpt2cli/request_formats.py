"""The JSON request and response formats of the hosted endpoints in the GPT-2 model cards.

Format A::

    {"inputs": {"input_string": ["My name is John and I am", "Once upon a time,"]},
     "parameters": {"min_length": 20, "max_length": 30, "num_return_sequences": 2}}

answered with a list per input, each a list of {"generated_text": ...} objects.

Format B::

    {"input_data": ["Once upon a time, far far away,", "Long time ago, there was a man"],
     "params": {"top_p": 1.0, "temperature": 1.0, "max_new_tokens": 50, "do_sample": true,
                "return_full_text": true}}

answered with a list of strings, one per input.

The Hugging Face Inference API's shape (its text-generation pipeline)::

    {"inputs": "Once upon a time,", "parameters": {"max_new_tokens": 20}}
    {"inputs": ["Once upon a time,", "Hello"], "parameters": {...}, "options": {...}}

answered as that API answers: for one string, a list of {"generated_text": ...} objects (one per
return sequence); for a list, such a list per input. "options" (use_cache, wait_for_model,
use_gpu) steer the hosted service and are accepted and ignored; "stream" may only be false.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gpt2cli.errors import InputError
from gpt2cli.generation_params import PARAMETERS

# Prompts in one request: a bound on what one answer holds in memory.
MAX_INPUTS = 1024
FORMAT_A: Literal["A"] = "A"
FORMAT_B: Literal["B"] = "B"
FORMAT_HF: Literal["HF"] = "HF"
# The hosted Inference API's service options: checked, then ignored (nothing to steer here).
HF_OPTIONS = ("use_cache", "wait_for_model", "use_gpu")

# Request parameters and their JSON types: the generation parameters (transformers'
# text-generation names), and return_full_text, which shapes the answer.
PARAMETER_TYPES: dict[str, type] = {
    **{parameter.name: parameter.json_type for parameter in PARAMETERS},
    "return_full_text": bool,
}
_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a string or a list of strings",
    dict: "an object",
}


@dataclass
class GenerationRequest:
    """A parsed request: its prompts, its generation parameters, and how to answer."""

    shape: Literal["A", "B", "HF"]
    source: str
    prompts: list[str]
    parameters: dict[str, Any]  # generation parameters (return_full_text excluded)
    return_full_text: bool | None
    single: bool = False  # HF shape: "inputs" was one string, not a list

    @property
    def parameters_key(self) -> str:
        return "params" if self.shape == FORMAT_B else "parameters"

    def field(self, parameter: str) -> str:
        """How to name a parameter in an error message."""
        return f"{self.source}: {self.parameters_key}.{parameter}"

    def prompt_source(self, index: int) -> str:
        """How to name a prompt in messages."""
        if self.single:
            return f"{self.source}: inputs"
        where = {FORMAT_A: "inputs.input_string", FORMAT_B: "input_data"}.get(self.shape, "inputs")
        return f"{self.source}: {where}[{index}]"

    def answer(self, texts: Sequence[Sequence[str]]) -> list:
        """The response for `texts`: per input, its generated texts (one or more)."""
        if self.shape == FORMAT_B:
            return [per_input[0] for per_input in texts]
        answers = [[{"generated_text": t} for t in per_input] for per_input in texts]
        return answers[0] if self.single else answers


def parse_request(
    text: str, source: str = "request", replace_invalid: bool = False
) -> GenerationRequest:
    """Parse and check a format A or B request; InputError names any bad field.

    Stricter than Python's json: a duplicate key and the NaN/Infinity literals are refused, and
    so is a lone surrogate escape such as "\\ud800" in a string (not Unicode; with
    `replace_invalid` it becomes U+FFFD, as invalid UTF-8 in a file does).
    """
    try:
        body = strict_loads(text, source, replace_invalid)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (ValueError, RecursionError) as exc:  # an over-long integer, or nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(f"{source}: not valid JSON ({reason})") from None
    if not isinstance(body, dict):
        raise InputError(f"{source}: expected a JSON object with 'inputs' or 'input_data'")
    if ("inputs" in body) == ("input_data" in body):
        raise InputError(
            f"{source}: expected exactly one of 'inputs' (format A or the Inference API's) or "
            "'input_data' (format B)"
        )
    single = False
    if "input_data" in body:
        shape, allowed, params_key = FORMAT_B, {"input_data", "params"}, "params"
        prompts = _prompts(body["input_data"], f"{source}: input_data")
    elif isinstance(body["inputs"], dict):
        shape, allowed, params_key = FORMAT_A, {"inputs", "parameters"}, "parameters"
        inputs = body["inputs"]
        if "input_string" not in inputs:
            raise InputError(f"{source}: inputs: expected an object with 'input_string'")
        extra = sorted(set(inputs) - {"input_string"})
        if extra:
            raise InputError(f"{source}: inputs.{extra[0]}: unknown field")
        prompts = _prompts(inputs["input_string"], f"{source}: inputs.input_string")
    elif isinstance(body["inputs"], str | list):
        shape, params_key = FORMAT_HF, "parameters"
        allowed = {"inputs", "parameters", "options", "stream"}
        single = isinstance(body["inputs"], str)
        if single:
            prompts = [_prompt(body["inputs"], f"{source}: inputs")]
        else:
            prompts = _prompts(body["inputs"], f"{source}: inputs")
        _check_service_fields(body, source)
    else:
        raise InputError(
            f"{source}: inputs: expected a string, a list of strings, or an object with "
            f"'input_string', got {_json_type(body['inputs'])}"
        )
    extra = sorted(set(body) - allowed)
    if extra:
        raise InputError(f"{source}: {extra[0]}: unknown field")
    raw = body.get(params_key)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{source}: {params_key}: expected an object")
    parameters = {
        name: check_type(name, value, f"{source}: {params_key}.{name}")
        for name, value in raw.items()
        if value is not None
    }
    return_full_text = parameters.pop("return_full_text", None)
    request = GenerationRequest(shape, source, prompts, parameters, return_full_text, single)
    if shape == FORMAT_B and parameters.get("num_return_sequences", 1) != 1:
        raise InputError(
            f"{request.field('num_return_sequences')}: format B answers one string per input; "
            "use format A ('inputs') for several sequences per input"
        )
    return request


def strict_loads(text: str, source: str, replace_invalid: bool = False) -> Any:
    """`json.loads`, refusing what it lets through: a duplicate key, NaN and Infinity, and lone
    surrogate escapes (U+FFFD with `replace_invalid`); the InputError names `source` and the
    place in the document. Syntax errors propagate as json.loads raises them."""
    body = json.loads(text, object_pairs_hook=_JsonObject.from_pairs, parse_constant=_NonFinite)
    return _checked(body, source, replace_invalid)


class _JsonObject(dict):
    """A decoded JSON object that remembers its first duplicate key."""

    duplicate: str | None = None

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls()
        for key, value in pairs:
            if key in obj and obj.duplicate is None:
                obj.duplicate = key
            obj[key] = value
        return obj


@dataclass(frozen=True)
class _NonFinite:
    """Where the body had NaN, Infinity or -Infinity: JavaScript, not JSON."""

    literal: str


_SURROGATE = re.compile("[\ud800-\udfff]")  # json joins valid pairs: any left are lone


def _checked(body: Any, source: str, replace_invalid: bool) -> Any:
    """`body` with plain dicts, after refusing duplicate keys, non-finite literals and lone
    surrogates (or replacing the surrogates), naming the first one's place in the document."""

    def fail(path: str, what: str) -> InputError:
        shown = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", path) or "the top level"
        return InputError(f"{source}: {shown}: {what}")

    def text(value: str, path: str) -> str:
        found = _SURROGATE.search(value)
        if found is None:
            return value
        if replace_invalid:
            return _SURROGATE.sub("\ufffd", value)
        raise fail(
            path,
            f"lone surrogate \\u{ord(found.group()):04x} at character {found.start()}: "
            "not valid Unicode (pass --replace-invalid to substitute U+FFFD)",
        )

    def convert(value: Any, path: str) -> Any:
        if isinstance(value, str):
            return text(value, path)
        if isinstance(value, _NonFinite):
            raise fail(path, f"{value.literal} is not valid JSON: numbers must be finite")
        if isinstance(value, _JsonObject):
            if value.duplicate is not None:
                raise fail(_join(path, value.duplicate), "duplicate key (name each key once)")
            return {}
        if isinstance(value, list):
            return []
        return value

    def entries(container: Any) -> Iterator[tuple[str | int, Any]]:
        return iter(container.items() if isinstance(container, dict) else enumerate(container))

    # Depth first in document order, without recursion: json accepts ~1000 levels of nesting.
    root = convert(body, "")
    stack = [(entries(body), root, "")] if isinstance(root, dict | list) else []
    while stack:
        items, copy, path = stack[-1]
        entry = next(items, None)
        if entry is None:
            stack.pop()
            continue
        key, value = entry
        if isinstance(key, str):
            child_path = _join(path, key)
            key = text(key, child_path)
        else:
            child_path = f"{path}[{key}]"
        child = convert(value, child_path)
        if isinstance(copy, dict):
            copy[key] = child
        else:
            copy.append(child)
        if isinstance(child, dict | list):
            stack.append((entries(value), child, child_path))
    return root


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _prompts(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: expected a non-empty list of strings")
    if len(value) > MAX_INPUTS:
        raise InputError(
            f"{where}: {len(value)} inputs, more than the {MAX_INPUTS} a request may hold "
            "(split the request, or give the prompts with -f FILE --lines)"
        )
    return [_prompt(prompt, f"{where}[{index}]") for index, prompt in enumerate(value)]


def _prompt(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string, got {_json_type(value)}")
    if not value.strip():
        raise InputError(f"{where}: the prompt is empty")
    if "\0" in value:
        raise InputError(f"{where}: contains a NUL character")
    return value


def _check_service_fields(body: dict[str, Any], source: str) -> None:
    """The Inference API's "options" (service switches, ignored here) and "stream" (only
    false: the answer is one JSON document)."""
    options = body.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise InputError(f"{source}: options: expected an object, got {_json_type(options)}")
        for key, value in options.items():
            if key not in HF_OPTIONS:
                raise InputError(f"{source}: options.{key}: unknown field")
            if not isinstance(value, bool):
                raise InputError(
                    f"{source}: options.{key}: expected true or false, got {_json_type(value)}"
                )
    stream = body.get("stream")
    if stream not in (None, False):
        raise InputError(
            f"{source}: stream: must be false, got {_json_type(stream)} (the answer is one JSON "
            "document; for text as it is generated use --stream without --request)"
        )


def check_type(name: str, value: Any, where: str) -> Any:
    """`value` of generation parameter `name` checked against its JSON type (the server's
    /v1 routes use it too)."""
    expected = PARAMETER_TYPES.get(name)
    if expected is None:
        raise InputError(f"{where}: unknown parameter")
    ok = False
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        try:
            value = float(value) if ok else value
        except OverflowError:
            raise InputError(f"{where}: number out of range") from None
    elif expected is list:  # of strings
        if isinstance(value, str):
            value = [value]
        ok = isinstance(value, list) and all(isinstance(s, str) for s in value)
        value = tuple(value) if ok else value
    elif expected is dict:  # checked further by the parameter's own parser (logit_bias)
        ok = isinstance(value, dict)
    if not ok:
        raise InputError(f"{where}: expected {_TYPE_NAMES[expected]}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40])}"
    return "a list" if isinstance(value, list) else "an object"

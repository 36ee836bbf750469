"""The generation parameters, listed once: name, type, default, check and help.

Everything else is derived from `PARAMETERS`: `GenerationParams` (its fields and per-parameter
checks), `TRANSFORMERS_DEFAULTS`, the `--request` JSON types (`request_formats`) and the
`generate` command's options (`commands/generate.py`). Adding a parameter is one entry here,
plus the engine code that uses it.

Names, types, defaults and meanings are transformers' (`GenerationConfig`, the text-generation
pipeline). Checks raise structured errors (`param`, `reason`, `hint`): each front end renders the
parameter's name its own way, so nothing here spells a flag in an error.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any

from gpt2cli.errors import InputError, ModelError, ParameterNamer

# Sequences per prompt, at most: OpenAI's API caps its `n` at 128 too. More are refused up
# front; rows (prompts x sequences) stream through the model --batch-size rows at a time.
MAX_NUM_RETURN_SEQUENCES = 128
MODEL_FAULT = "a fault in the model's files"
MODEL_SOURCE = "the model's generation config"
# New tokens when the model's generation config sets no length: the default of the pinned
# transformers text-generation pipeline (TextGenerationPipeline._default_generation_config,
# 4.57). Unlike transformers' GenerationConfig default of max_length 20 in all, it never makes
# an ordinary prompt fail, and a default budget stops at the end of the context.
PIPELINE_MAX_NEW_TOKENS = 256
# transformers' GenerationConfig default max_length: a model "sets" a length only with another.
GLOBAL_MAX_LENGTH = 20
# Hints may name `{greedy}`: do_sample false (the CLI's --greedy).
GREEDY = "greedy"


@dataclass(frozen=True)
class Rule:
    """A check on one parameter's value: `ok(value)`, else `reason` ("must be >= 1")."""

    ok: Callable[[Any], bool]
    reason: str


def at_least(bound: int) -> Rule:
    return Rule(lambda v: v >= bound, f"must be >= {bound}")


def at_most(bound: int) -> Rule:
    return Rule(lambda v: v <= bound, f"must be at most {bound}")


POSITIVE = Rule(lambda v: v > 0, "must be a strictly positive number")
UNIT = Rule(lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
OPENAI_PENALTY = Rule(lambda v: -2.0 <= v <= 2.0, "must be in [-2, 2]")  # OpenAI's range
MAX_LOGIT_BIAS = 100.0  # OpenAI's range: -100..100


def parse_logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """Token biases as (id, bias) pairs sorted by id, from OpenAI's JSON object {"id": bias},
    the CLI's "ID=BIAS" strings, or (id, bias) pairs. ValueError(reason) refuses a malformed
    entry, an id below 0, a bias outside -100..100 and an id given twice."""
    pairs: dict[int, float] = {}
    items = value.items() if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, str):
            token, sep, bias = item.partition("=")
            if not sep:
                raise ValueError(f"expected ID=BIAS (a token id and a number), got {item!r}")
            token_id, number = _int_text(token), _float_text(bias)
        elif isinstance(item, tuple | list) and len(item) == 2:
            token, bias = item
            token_id = _int_text(token) if isinstance(token, str) else token
            number = bias
        else:
            raise ValueError(f"expected ID=BIAS (a token id and a number), got {item!r}")
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ValueError(f"token ids must be integers >= 0, got {token!r}")
        if not isinstance(number, int | float) or isinstance(number, bool):
            raise ValueError(f"token {token_id}: the bias must be a number, got {bias!r}")
        if not -MAX_LOGIT_BIAS <= number <= MAX_LOGIT_BIAS:
            raise ValueError(f"token {token_id}: the bias must be in [-100, 100], got {number:g}")
        if token_id in pairs:
            raise ValueError(f"token {token_id} is given twice")
        pairs[token_id] = float(number)
    return tuple(sorted(pairs.items()))


def _int_text(text: str) -> int | None:
    """A decimal integer written as text (surrounding spaces allowed), else None."""
    text = text.strip()
    digits = text[1:] if text.startswith("-") else text
    return int(text) if digits.isascii() and digits.isdigit() else None


def _float_text(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_logit_bias(bias: tuple[tuple[int, float], ...], vocab_size: int) -> None:
    """Every biased token must be in the model's vocabulary (InputError naming logit_bias)."""
    outside = [token for token, _ in bias if token >= vocab_size]
    if outside:
        raise InputError(
            param="logit_bias",
            reason=f"token id {outside[0]} is not in the model's vocabulary "
            f"(ids 0 to {vocab_size - 1})",
        )


@dataclass(frozen=True)
class Parameter:
    """One generation parameter."""

    name: str  # transformers' name
    type: type  # int, float, bool or str (a list of str when `repeated`)
    help: str  # the CLI's help text
    default: Any = None  # transformers' GenerationConfig default; None: unset
    rules: tuple[Rule, ...] = ()  # checked in order on any value but None
    hint: str = ""  # added to a rule's error from the user ({parameter} placeholders)
    repeated: bool = False  # a list of values (JSON: a string or a list of strings)
    model_setting: bool = True  # a GenerationConfig field: a model's generation config may set it
    cli_short: str = ""  # a short CLI flag besides --name-with-dashes ("-n")
    cli_off: str = ""  # a bool's off switch ("--greedy" for --do-sample)
    metavar: str | None = None
    # A front end's value (CLI strings, a request's JSON) as the field holds it; raises
    # ValueError(reason) for a bad one. None: the value is the field's as it comes.
    parse: Callable[[Any], Any] | None = None
    json: type | None = None  # the JSON type a request gives it as, when not the derived one
    field_type: Any = None  # the GenerationParams field's type, when not the derived one
    cli_aliases: tuple[str, ...] = ()  # more long flags for the same option ("--temp")
    # Giving it explicitly turns sampling on (unless do_sample is given too): a sampling
    # warper that greedy decoding would ignore.
    implies_sampling: bool = False

    @property
    def field_default(self) -> Any:
        """The default of the GenerationParams field."""
        return () if self.repeated else self.default

    @property
    def annotation(self) -> Any:
        """The GenerationParams field's type."""
        if self.field_type is not None:
            return self.field_type
        if self.repeated:
            return tuple[self.type, ...]
        return self.type if self.default is not None else self.type | None

    @property
    def json_type(self) -> type:
        """The JSON type a request gives it as (int, float, bool, list, or dict)."""
        if self.json is not None:
            return self.json
        return list if self.repeated else self.type

    @property
    def cli_type(self) -> Any:
        """The CLI option's type (every generation option defaults to None: unset)."""
        return (list[self.type] if self.repeated else self.type) | None

    def problem(self, value: Any) -> str | None:
        """The reason `value` is refused (with the value), or None."""
        if value is None:
            return None
        if self.parse is not None:
            try:
                value = self.parse(value)
            except ValueError as exc:
                return str(exc)
        for rule in self.rules:
            if not rule.ok(value):
                return f"{rule.reason}, got {value!r}"
        return None


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "max_new_tokens",
        int,
        "New tokens to generate, beats --max-length (default: the model's length, else "
        f"{PIPELINE_MAX_NEW_TOKENS}, at most to the end of the context).",
        None,
        (at_least(1),),
        cli_short="-n",
        cli_aliases=("--n-predict",),
        metavar="N",
    ),
    Parameter(
        "max_length", int, "Prompt plus new tokens, at most (replaces the default of new tokens).",
        20, (at_least(1),),
    ),
    Parameter("min_length", int, "No end-of-text before this total length.", 0, (at_least(0),)),
    Parameter(
        "min_new_tokens", int, "No end-of-text before this many new tokens.", None, (at_least(0),)
    ),
    Parameter(
        "num_return_sequences",
        int,
        "Sequences per prompt (needs sampling).",
        1,
        (at_least(1), at_most(MAX_NUM_RETURN_SEQUENCES)),
        metavar="N",
    ),
    Parameter(
        "do_sample",
        bool,
        "Sample, or take the likeliest token (gpt2: sample).",
        False,
        cli_off="--greedy",
    ),
    Parameter(
        "temperature",
        float,
        "Divide logits by this (1.0); turns sampling on; 0: greedy.",
        1.0,
        (POSITIVE,),
        hint="for greedy decoding use {greedy}",
        cli_aliases=("--temp",),
        implies_sampling=True,
    ),
    Parameter(
        "top_k",
        int,
        "Sample from the k most likely tokens; 0: all (50); turns sampling on.",
        50,
        (Rule(lambda v: v >= 0, "must be >= 0 (0 disables top-k)"),),
        implies_sampling=True,
    ),
    Parameter(
        "top_p",
        float,
        "Sample from the nucleus of this mass (1.0); turns sampling on.",
        1.0,
        (Rule(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),),
        implies_sampling=True,
    ),
    Parameter(
        "min_p",
        float,
        "Keep tokens at least this fraction as likely as the likeliest (0..1; off).",
        None,
        (UNIT,),
        implies_sampling=True,
    ),
    Parameter(
        "typical_p",
        float,
        "Typical sampling: keep this mass of the tokens nearest the entropy (1.0: off).",
        1.0,
        (Rule(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),),
        implies_sampling=True,
    ),
    Parameter(
        "repetition_penalty", float, "> 1 discourages seen tokens (1.0).", 1.0, (POSITIVE,)
    ),
    Parameter(
        "presence_penalty",
        float,
        "Lower the logits of tokens generated so far by this (OpenAI; -2..2; 0).",
        0.0,
        (OPENAI_PENALTY,),
        model_setting=False,
    ),
    Parameter(
        "frequency_penalty",
        float,
        "Lower generated tokens' logits by this times their count (OpenAI; -2..2; 0).",
        0.0,
        (OPENAI_PENALTY,),
        model_setting=False,
    ),
    Parameter(
        "logit_bias",
        str,
        "Add BIAS (-100..100) to token ID's logit (repeatable; OpenAI's logit_bias).",
        None,
        repeated=True,
        model_setting=False,
        metavar="ID=BIAS",
        parse=parse_logit_bias,
        json=dict,
        field_type=tuple[tuple[int, float], ...],
    ),
    Parameter(
        "no_repeat_ngram_size", int, "Never repeat an n-gram of this size.", 0, (at_least(0),)
    ),
    Parameter(
        "seed",
        int,
        "Make sampling reproducible (same on both backends).",
        None,
        (Rule(lambda v: 0 <= v < 2**63, "must be a non-negative integer"),),
        model_setting=False,
    ),
    Parameter(
        "stop",
        str,
        "End a sequence at STR, left out of the output (repeatable; \\n escapes work).",
        None,
        (Rule(all, "stop strings must not be empty"),),
        repeated=True,
        model_setting=False,
        metavar="STR",
    ),
)

BY_NAME: dict[str, Parameter] = {p.name: p for p in PARAMETERS}

# transformers' GenerationConfig defaults for the parameters a model's files may set.
TRANSFORMERS_DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS if p.model_setting}


def _table_fields(cls: type) -> type:
    """`cls` as a frozen dataclass whose first fields are the table's parameters."""
    own = dict(cls.__dict__.get("__annotations__", {}))
    cls.__annotations__ = {**{p.name: p.annotation for p in PARAMETERS}, **own}
    for parameter in PARAMETERS:
        setattr(cls, parameter.name, parameter.field_default)
    return dataclass(frozen=True)(cls)


SAMPLING_IMPLIED_BY: tuple[str, ...] = tuple(p.name for p in PARAMETERS if p.implies_sampling)


def _sampling(values: dict[str, Any], given: dict[str, Any]) -> None:
    """Sampling switched on by explicit sampling parameters (see GenerationParams.resolve)."""
    implied = [name for name in SAMPLING_IMPLIED_BY if name in given]
    if given.get("temperature") == 0 and given.get("do_sample") is not True:
        values["do_sample"] = False  # temperature 0: greedy, as llama.cpp and the pipeline
        values["temperature"] = BY_NAME["temperature"].default
        implied.remove("temperature")
        if "do_sample" not in given:
            values["greedy_ignores"] = tuple(implied)
            return
    if "do_sample" not in given:
        if implied:
            values["do_sample"] = True
    elif not given["do_sample"]:
        values["greedy_ignores"] = tuple(implied)


def greedy_aware(name: ParameterNamer) -> ParameterNamer:
    """`name`, also naming `{greedy}` as a front end that has no such switch would say it."""

    def named(parameter: str) -> str:
        if parameter != GREEDY:
            return name(parameter)
        do_sample = name("do_sample")
        return f"--{GREEDY}" if do_sample.startswith("--") else f"{do_sample} false"

    return named


@_table_fields
class GenerationParams:
    """Resolved generation parameters (transformers' names and meanings): the fields of
    `PARAMETERS`, then the ones a front end sets from elsewhere."""

    truncate_left: bool = False
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    # max_new_tokens is the pipeline's default (no length from the model or the caller): a
    # prompt too long for it gets fewer new tokens, up to the end of the context, not an error.
    default_length: bool = False
    # Parameters given explicitly that greedy decoding ignores (do_sample given false): the
    # front end warns about each, so that no option is dropped silently.
    greedy_ignores: tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls,
        model_defaults: dict[str, Any],
        overrides: dict[str, Any],
        *,
        eos_token_id: int | None = None,
        name: ParameterNamer | None = None,
        model_source: str = MODEL_SOURCE,
        vocab_size: int | None = None,
        model_length: bool | None = None,
    ) -> GenerationParams:
        """transformers' defaults, then the model's generation defaults, then `overrides`.

        `overrides` may also hold truncate_left; None values are ignored. Out-of-range values
        raise InputError naming the parameter (front ends render it; with `name` the message
        is rendered here); a value that comes from the model (`model_source`) is the model's
        fault, a ModelError. With `vocab_size`, token ids (logit_bias) are checked against it.

        Length: the model's max_new_tokens, else the model's max_length when `model_length`
        says its generation config sets one (None: any max_length in `model_defaults` other
        than transformers' 20), else PIPELINE_MAX_NEW_TOKENS, as the text-generation pipeline
        does; an explicit max_length beats a default max_new_tokens.

        Sampling: an explicit parameter marked `implies_sampling` (temperature, top_k, ...)
        turns sampling on unless do_sample is given; with do_sample given false they are
        listed in `greedy_ignores`. An explicit temperature of 0 means greedy decoding (as in
        llama.cpp and the pipeline) unless do_sample is given true.
        """
        try:
            params = cls._resolve(
                model_defaults, overrides, eos_token_id, model_source, model_length
            )
            if vocab_size is not None:
                check_logit_bias(params.logit_bias, vocab_size)
            return params
        except InputError as exc:
            if name is None:
                raise
            raise InputError(exc.render(greedy_aware(name))) from None

    @classmethod
    def _resolve(
        cls,
        model_defaults: dict[str, Any],
        overrides: dict[str, Any],
        eos_token_id: int | None,
        model_source: str,
        model_length: bool | None,
    ) -> GenerationParams:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = dict(TRANSFORMERS_DEFAULTS)
        values.update({k: v for k, v in model_defaults.items() if k in TRANSFORMERS_DEFAULTS})
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - known
        if unknown:
            raise InputError(param=sorted(unknown)[0], reason="unknown generation parameter")
        for parameter in PARAMETERS:
            if parameter.parse is not None and parameter.name in given:
                try:
                    given[parameter.name] = parameter.parse(given[parameter.name])
                except ValueError as exc:
                    raise InputError(param=parameter.name, reason=str(exc)) from None
        if model_length is None:
            model_length = model_defaults.get("max_length") not in (None, GLOBAL_MAX_LENGTH)
        if values.get("max_new_tokens") is None and not model_length:
            values["max_new_tokens"] = PIPELINE_MAX_NEW_TOKENS
            values["default_length"] = True
        values.update(given)
        if "max_new_tokens" in given or "max_length" in given:
            values["default_length"] = False
        if given.get("max_length") is not None and "max_new_tokens" not in given:
            values["max_new_tokens"] = None  # an explicit max_length beats a default max_new_tokens
        _sampling(values, given)

        eos = model_defaults.get("eos_token_id", eos_token_id)
        eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
        pad = model_defaults.get("pad_token_id")
        if pad is None:
            pad = eos_ids[0] if eos_ids else 0
        values.setdefault("eos_token_ids", eos_ids)
        values.setdefault("pad_token_id", pad)
        for parameter in PARAMETERS:
            if parameter.repeated:
                values[parameter.name] = tuple(values.get(parameter.name) or ())
        params = cls(**values)
        from_model = {k for k in model_defaults if k in TRANSFORMERS_DEFAULTS} - set(given)
        params.validate(None, from_model, model_source)
        return params

    def validate(
        self,
        name: ParameterNamer | None = None,
        from_model: Collection[str] = (),
        model_source: str = MODEL_SOURCE,
    ) -> None:
        """Raise InputError for values transformers would reject (or that make no sense), or
        ModelError where the value came from the model (the parameters in `from_model`)."""
        try:
            self._validate(from_model, model_source)
        except InputError as exc:
            if name is None:
                raise
            raise InputError(exc.render(greedy_aware(name))) from None

    def _validate(self, from_model: Collection[str], model_source: str) -> None:
        for parameter in PARAMETERS:
            problem = parameter.problem(getattr(self, parameter.name))
            if problem is None:
                continue
            if parameter.name in from_model:
                raise ModelError(
                    reason=f"{parameter.name}: {problem}", hint=MODEL_FAULT, where=model_source
                )
            raise InputError(param=parameter.name, reason=problem, hint=parameter.hint or None)
        if self.num_return_sequences > 1 and not self.do_sample:
            raise InputError(
                param="num_return_sequences",
                reason=f"must be 1 without sampling, got {self.num_return_sequences}",
                hint="sample with {do_sample}: greedy decoding returns the same sequence "
                "every time",
            )

    def new_token_budget(self, prompt_tokens: int) -> int:
        """How many tokens a row with this prompt length may generate (max_new_tokens wins)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return self.max_length - prompt_tokens

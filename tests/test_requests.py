"""`generate --request`: the model cards' request formats A and B, the Inference API's shape,
and their answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2cli.errors import InputError
from gpt2cli.request_formats import parse_request
from tests.clirun import assert_one_line_error, run_cli
from tests.test_generate import invoke

FORMAT_A = {
    "inputs": {"input_string": ["My name is John and I am", "Once upon a time,"]},
    "parameters": {"min_length": 20, "max_length": 30, "num_return_sequences": 2},
}
FORMAT_B = {
    "input_data": ["Once upon a time, far far away,", "Long time ago, there was a man"],
    "params": {
        "top_p": 1.0,
        "temperature": 1.0,
        "max_new_tokens": 50,
        "do_sample": True,
        "return_full_text": True,
    },
}


def test_parse_format_a() -> None:
    request = parse_request(json.dumps(FORMAT_A), "req.json")
    assert request.shape == "A" and request.prompts == FORMAT_A["inputs"]["input_string"]
    assert request.parameters == FORMAT_A["parameters"] and request.return_full_text is None
    assert request.answer([["a", "b"], ["c", "d"]]) == [
        [{"generated_text": "a"}, {"generated_text": "b"}],
        [{"generated_text": "c"}, {"generated_text": "d"}],
    ]


def test_parse_format_b() -> None:
    request = parse_request(json.dumps(FORMAT_B), "req.json")
    assert request.shape == "B" and request.prompts == FORMAT_B["input_data"]
    assert request.return_full_text is True and "return_full_text" not in request.parameters
    assert request.parameters["max_new_tokens"] == 50 and request.parameters["top_p"] == 1.0
    assert request.answer([["a"], ["b"]]) == ["a", "b"]


def test_parameter_types_are_normalised() -> None:
    body = {"input_data": ["x"], "params": {"top_k": 5.0, "top_p": 1, "stop": "\n", "seed": None}}
    request = parse_request(json.dumps(body))
    assert request.parameters == {"top_k": 5, "top_p": 1.0, "stop": ("\n",)}
    assert type(request.parameters["top_k"]) is int


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", "r.json: not valid JSON (line 1, column 2"),
        ("[]", "r.json: expected a JSON object with 'inputs' or 'input_data'"),
        ({"prompt": "x"}, "exactly one of 'inputs' (format A or the Inference API's) or "),
        ({"inputs": ["x"], "input_data": ["x"]}, "exactly one of"),
        ({"inputs": {"text": "x"}}, "r.json: inputs: expected an object with 'input_string'"),
        (
            {"inputs": 3},
            "r.json: inputs: expected a string, a list of strings, or an object with "
            "'input_string', got the number 3",
        ),
        ({"inputs": " "}, "r.json: inputs: the prompt is empty"),
        ({"inputs": []}, "r.json: inputs: expected a non-empty list of strings"),
        ({"inputs": ["x", None]}, "r.json: inputs[1]: expected a string, got null"),
        ({"inputs": "x", "params": {}}, "r.json: params: unknown field"),
        ({"inputs": "x", "parameters": {"max_time": 3}}, "parameters.max_time: unknown parameter"),
        ({"inputs": "x", "options": []}, "r.json: options: expected an object, got a list"),
        ({"inputs": "x", "options": {"use_gpu": 1}}, "options.use_gpu: expected true or false"),
        ({"inputs": "x", "options": {"retry": True}}, "r.json: options.retry: unknown field"),
        ({"inputs": "x", "stream": True}, "r.json: stream: must be false, got true"),
        ({"inputs": {"input_string": ["x"]}, "options": {}}, "r.json: options: unknown field"),
        ({"inputs": {"input_string": ["x"], "extra": 1}}, "r.json: inputs.extra: unknown field"),
        ({"inputs": {"input_string": []}}, "inputs.input_string: expected a non-empty list"),
        ({"inputs": {"input_string": ["x", 3]}}, "inputs.input_string[1]: expected a string"),
        ({"input_data": ["ok", " "]}, "r.json: input_data[1]: the prompt is empty"),
        ({"input_data": ["x"], "parameters": {}}, "r.json: parameters: unknown field"),
        ({"input_data": ["x"], "params": []}, "r.json: params: expected an object"),
        ({"input_data": ["x"], "params": {"top_q": 1}}, "r.json: params.top_q: unknown parameter"),
        (
            {"inputs": {"input_string": ["x"]}, "parameters": {"max_length": "30"}},
            'r.json: parameters.max_length: expected an integer, got the string "30"',
        ),
        (
            {"input_data": ["x"], "params": {"do_sample": 1}},
            "r.json: params.do_sample: expected true or false, got the number 1",
        ),
        (
            {"input_data": ["x"], "params": {"top_k": 2.5}},
            "r.json: params.top_k: expected an integer, got the number 2.5",
        ),
        (
            {"input_data": ["x"], "params": {"stop": [1]}},
            "r.json: params.stop: expected a string or a list of strings",
        ),
        (
            {"input_data": ["x"], "params": {"num_return_sequences": 2}},
            "r.json: params.num_return_sequences: format B answers one string per input",
        ),
    ],
)
def test_malformed_requests_name_the_field(body: object, message: str) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(InputError) as caught:
        parse_request(text, "r.json")
    assert message in caught.value.message


# --- end to end ---------------------------------------------------------------------------------


def test_format_a_answer_shape(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(FORMAT_A), encoding="utf-8")
    code, out, _ = invoke("-m", str(tiny_model_dir), "--seed", "1", "--request", str(path))
    answer = json.loads(out)
    assert code == 0 and len(answer) == 2
    for prompt, sequences in zip(FORMAT_A["inputs"]["input_string"], answer, strict=True):
        assert len(sequences) == 2
        for item in sequences:
            assert list(item) == ["generated_text"]
            assert item["generated_text"].startswith(prompt)  # full text, as the pipeline does
    assert answer[0][0] != answer[0][1]


def test_format_b_answer_shape_from_stdin(tiny_model_dir: Path) -> None:
    body = json.loads(json.dumps(FORMAT_B))
    body["params"].update({"max_new_tokens": 5, "do_sample": False, "return_full_text": False})
    code, out, _ = invoke("-m", str(tiny_model_dir), "--request", "-", stdin=json.dumps(body))
    answer = json.loads(out)
    assert code == 0 and isinstance(answer, list) and len(answer) == 2
    assert all(isinstance(text, str) for text in answer)
    assert not answer[0].startswith("Once upon")
    # The same prompts on the command line give the same continuations.
    code, out, _ = invoke(
        "-m", str(tiny_model_dir), "--greedy", "--max-new-tokens", "5", "--no-return-full-text",
        "--format", "json", *FORMAT_B["input_data"],
    )
    assert [r["sequences"][0]["generated_text"] for r in json.loads(out)] == answer


def test_request_parameters_override_options(tiny_model_dir: Path) -> None:
    """The request wins; each flag it overrides is reported on stderr."""
    body = {"input_data": ["Hello"], "params": {"max_new_tokens": 3, "return_full_text": False}}
    args = ("-m", str(tiny_model_dir), "--greedy", "--max-new-tokens", "9", "--request", "-")
    code, out, err = invoke(*args, "--return-full-text", stdin=json.dumps(body))
    short = json.loads(out)[0]
    assert err.splitlines() == [
        "gpt2cli: warning: --max-new-tokens 9 is overridden by <stdin>: params.max_new_tokens 3 "
        "(a request's parameters win over flags)",
        "gpt2cli: warning: --return-full-text is overridden by <stdin>: params.return_full_text "
        "false (a request's parameters win over flags)",
    ]
    code, out, _ = invoke(
        "-m", str(tiny_model_dir), "--greedy", "--max-new-tokens", "3", "--format", "jsonl",
        "--no-return-full-text", "Hello",
    )
    assert short == json.loads(out)["sequences"][0]["generated_text"]
    # Flags the request leaves unset apply, and an equal value is no conflict.
    same = ("-m", str(tiny_model_dir), "--max-new-tokens", "3", "--greedy", "--request", "-")
    code, out, err = invoke(*same, stdin=json.dumps(body))
    assert code == 0 and err == "" and json.loads(out)[0] == short


def test_request_errors_end_to_end(tiny_model_dir: Path) -> None:
    body = {"inputs": {"input_string": ["Hi"]}, "parameters": {"top_k": -1}}
    args = ("generate", "-m", str(tiny_model_dir), "--request", "-")
    result = run_cli(*args, input=json.dumps(body))
    line = assert_one_line_error(result, 2)
    assert "<stdin>: parameters.top_k: must be >= 0" in line
    code, _, message = invoke("-m", str(tiny_model_dir), "--request", "-", "Hi", stdin="{}")
    assert code == 2 and "--request takes no TEXT arguments" in message


# --- the Hugging Face Inference API's shape ----------------------------------------------------


def test_parse_inference_api_shape() -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 5, "temperature": 0.5},
            "options": {"use_cache": False, "wait_for_model": True}, "stream": False}
    request = parse_request(json.dumps(body), "req.json")
    assert request.shape == "HF" and request.single and request.prompts == ["Hello"]
    assert request.parameters == {"max_new_tokens": 5, "temperature": 0.5}
    assert request.prompt_source(0) == "req.json: inputs"
    assert request.field("top_k") == "req.json: parameters.top_k"
    # One string: a list of {"generated_text"}, one per return sequence, as the API answers.
    assert request.answer([["a", "b"]]) == [{"generated_text": "a"}, {"generated_text": "b"}]
    many = parse_request(json.dumps({"inputs": ["x", "y"]}), "req.json")
    assert not many.single and many.parameters == {} and many.prompt_source(1) == (
        "req.json: inputs[1]"
    )
    assert many.answer([["a"], ["b"]]) == [[{"generated_text": "a"}], [{"generated_text": "b"}]]


def test_inference_api_answers_end_to_end(tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "do_sample": False}}
    code, out, err = invoke("-m", model, "--request", "-", stdin=json.dumps(body))
    assert code == 0, err
    answer = json.loads(out)
    _, cli, _ = invoke("-m", model, "--greedy", "-n", "4", "--format", "json", "Hello")
    assert answer == [{"generated_text": json.loads(cli)[0]["sequences"][0]["generated_text"]}]
    body = {"inputs": ["Hello", "The"],
            "parameters": {"max_new_tokens": 3, "num_return_sequences": 2, "top_k": 5,
                           "return_full_text": False}}
    code, out, err = invoke("-m", model, "--seed", "4", "--request", "-", stdin=json.dumps(body))
    answer = json.loads(out)
    assert code == 0 and len(answer) == 2 and all(len(per) == 2 for per in answer)
    assert all(list(item) == ["generated_text"] for per in answer for item in per)
    assert not answer[0][0]["generated_text"].startswith("Hello")


def test_request_sampling_parameters_imply_sampling(tiny_model_dir: Path, tmp_path: Path) -> None:
    """As the Inference API's servers do: a temperature alone samples; with do_sample false it
    is reported as ignored."""
    from tests.test_generate import copy_model

    model = str(copy_model(tiny_model_dir, tmp_path / "m", config={"task_specific_params": None}))
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "num_return_sequences": 2,
                                               "temperature": 1.5}}
    code, out, err = invoke("-m", model, "--request", "-", stdin=json.dumps(body))
    assert code == 0, err
    first, second = json.loads(out)
    assert first != second
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "temperature": 1.5,
                                               "do_sample": False}}
    code, out, err = invoke("-m", model, "--request", "-", stdin=json.dumps(body))
    assert code == 0 and err.strip() == (
        "gpt2cli: warning: <stdin>: parameters.temperature is ignored under greedy decoding "
        "(<stdin>: parameters.do_sample false)"
    )

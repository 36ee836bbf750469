"""`gpt2cli serve`: real server processes (tests/serverrun.py) driven by httpx and the official
`openai` client."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.clirun import run_cli
from tests.serverrun import running_server

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

KEY = "sekrit-key"


@pytest.fixture(scope="session")
def server(memorised_model_dir: Path):
    with running_server(memorised_model_dir, "--slots", "8") as running:
        yield running


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path):
    """One slot, no queue, an API key from the environment and a small body limit."""
    with running_server(
        tiny_model_dir, "--slots", "1", "--max-queue", "0", "--max-body-bytes", "4000",
        env={"GPT2CLI_API_KEY": KEY},
    ) as running:
        yield running


def complete(url: str, timeout: float = 60, **body) -> dict:
    response = httpx.post(url + "/v1/completions", json=body, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_routes_and_info(server) -> None:
    assert httpx.get(server.url + "/").text == "Healthy"
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    page = httpx.get(server.url + "/", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    props = httpx.get(server.url + "/props").json()
    assert props["context"] == 1024 and props["slots"] == 8 and props["backend"] == "torch"
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["object"] == "model"
    ids = httpx.post(server.url + "/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert ids == [15496, 995]
    pieces = httpx.post(server.url + "/tokenize", json={"content": "Hello world",
                                                        "with_pieces": True}).json()["tokens"]
    assert pieces == [{"id": 15496, "piece": "Hello"}, {"id": 995, "piece": " world"}]
    text = httpx.post(server.url + "/detokenize", json={"tokens": ids}).json()["content"]
    assert text == "Hello world"
    embedded = httpx.post(server.url + "/v1/embeddings", json={"input": ["a b", "c"]}).json()
    assert [len(d["embedding"]) for d in embedded["data"]] == [64, 64]
    assert embedded["usage"]["prompt_tokens"] == 3


def test_openai_client(server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60)
    done = client.completions.create(model="m", prompt="The lighthouse", max_tokens=8,
                                     temperature=0)
    text = done.choices[0].text
    assert text.startswith(" keeper climbed")
    assert done.usage.prompt_tokens == 2 and done.usage.completion_tokens == 8
    stream = client.completions.create(model="m", prompt="The lighthouse", max_tokens=8,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == 8
    with_logprobs = client.completions.create(model="m", prompt="The lighthouse", max_tokens=4,
                                              temperature=0, logprobs=3)
    lp = with_logprobs.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.top_logprobs[0]) == 3
    assert lp.top_logprobs[0][lp.tokens[0]] == lp.token_logprobs[0]  # greedy: the top token
    echoed = client.completions.create(model="m", prompt="The lighthouse keeper", max_tokens=0,
                                       echo=True, logprobs=1)
    lp = echoed.choices[0].logprobs
    assert echoed.choices[0].text == "The lighthouse keeper"
    assert "".join(lp.tokens) == "The lighthouse keeper" and len(lp.tokens) == 3
    assert lp.token_logprobs[0] is None and all(v < 0 for v in lp.token_logprobs[1:])


def test_prompt_forms_and_seed_match_generate(server, memorised_model_dir: Path) -> None:
    args = dict(max_tokens=12, temperature=1.3, top_k=0, seed=7)
    alone = complete(server.url, prompt="The lighthouse", **args)["choices"][0]["text"]
    cli = run_cli("generate", "-m", str(memorised_model_dir), "--seed", "7", "--temp", "1.3",
                  "--top-k", "0", "-n", "12", "--no-return-full-text", "The lighthouse")
    assert cli.returncode == 0, cli.err
    assert cli.out == alone + "\n"
    ids = httpx.post(server.url + "/tokenize", json={"content": "The lighthouse"}).json()["tokens"]
    many = complete(server.url, prompt=[ids, "The lighthouse"], **args)["choices"]
    assert [c["text"] for c in many][0] == alone
    assert complete(server.url, prompt=ids, **args)["choices"][0]["text"] == alone


def test_score_equals_generate_request(server, memorised_model_dir: Path, tmp_path: Path) -> None:
    requests = [
        {"inputs": {"input_string": ["The lighthouse", "Nobody in"]},
         "parameters": {"max_new_tokens": 10, "num_return_sequences": 2, "do_sample": True,
                        "seed": 3}},
        {"input_data": ["The lighthouse", "Nobody"],
         "params": {"max_new_tokens": 8, "temperature": 0.9, "seed": 5,
                    "return_full_text": False}},
    ]
    for request in requests:
        path = tmp_path / "request.json"
        path.write_text(json.dumps(request))
        cli = run_cli("generate", "-m", str(memorised_model_dir), "--request", str(path))
        assert cli.returncode == 0, cli.err
        served = httpx.post(server.url + "/score", json=request, timeout=60)
        assert served.status_code == 200, served.text
        assert served.json() == json.loads(cli.out)
    bad = httpx.post(server.url + "/score", json={"input_data": ["x"], "params": {"topp": 1}})
    assert bad.status_code == 400 and "params.topp" in bad.json()["error"]["message"]
    assert "expected" in bad.json()["error"]


def test_32_concurrent_clients_get_what_they_get_alone(server) -> None:
    bodies = [
        dict(prompt=["The lighthouse", "Nobody in the", "He polished"][i % 3],
             max_tokens=4 + (i * 7) % 23, temperature=1.0, top_k=0, seed=1000 + i)
        for i in range(32)
    ]

    def answer(body: dict) -> tuple:
        done = complete(server.url, **body)
        return done["choices"][0]["text"], done["choices"][0]["finish_reason"], done["usage"]

    alone = [answer(body) for body in bodies]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(answer, bodies))
    assert together == alone
    assert len({text for text, _, _ in alone}) > 20  # different seeds: different texts


def test_back_pressure(tiny_model_dir: Path) -> None:
    with running_server(tiny_model_dir, "--slots", "2", "--max-queue", "2") as busy:
        body = {"prompt": "Once upon", "max_tokens": 600, "temperature": 0}
        barrier = threading.Barrier(20, timeout=30)

        def one(_: int) -> httpx.Response:
            with httpx.Client(timeout=120) as client:
                barrier.wait()
                return client.post(busy.url + "/v1/completions", json=body)

        with ThreadPoolExecutor(20) as pool:
            codes = sorted(r.status_code for r in pool.map(one, range(20)))
            refused = [r for r in pool.map(one, range(20)) if r.status_code == 429]
        assert codes == [200] * 4 + [429] * 16
        assert refused and refused[0].headers["retry-after"] == "1"
        assert refused[0].json()["error"]["code"] == "queue_full"
        assert httpx.get(busy.url + "/health").status_code == 200
        after = complete(busy.url, prompt="Once upon", max_tokens=5, temperature=0)
        assert after["usage"]["completion_tokens"] == 5
        metrics = httpx.get(busy.url + "/metrics").text
        assert 'gpt2cli_http_responses_total{status="4xx"} 32.0' in metrics


def test_auth_body_limit_and_validation(tiny_server) -> None:
    url = tiny_server.url
    body = {"prompt": "Hi", "max_tokens": 2}
    assert httpx.get(url + "/health").status_code == 200  # public
    missing = httpx.post(url + "/v1/completions", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(url + "/v1/completions", json=body, headers=_auth("nope"))
    assert wrong.status_code == 401
    assert httpx.post(url + "/v1/completions", json=body, headers=_auth()).status_code == 200
    big = httpx.post(url + "/v1/completions", json={"prompt": "x" * 5000}, headers=_auth())
    assert big.status_code == 413
    over = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1024,
                                                     "unknown_field": 1}, headers=_auth())
    error = over.json()["error"]
    assert over.status_code == 400 and error["param"] == "max_tokens"
    assert error["type"] == "invalid_request_error"
    bad = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "top_p": 2}, headers=_auth())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"
    nan = httpx.post(url + "/v1/completions", content=b'{"prompt": "Hi", "temperature": NaN}',
                     headers={**_auth(), "content-type": "application/json"})
    assert nan.status_code == 400


def test_disconnect_mid_stream_frees_the_slot(tiny_server) -> None:
    url = tiny_server.url
    body = {"prompt": "Once upon", "max_tokens": 1000, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", url + "/v1/completions", json=body, headers=_auth()) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break
    # One slot and no queue: the next request is served only once the first was cancelled.
    deadline = time.monotonic() + 10
    while True:
        response = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3},
                              headers=_auth(), timeout=60)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert response.status_code == 200, response.text
    metrics = httpx.get(url + "/metrics", headers=_auth()).text
    assert "gpt2cli_requests_running 0.0" in metrics


def test_sigterm_under_load_exits_143(tiny_model_dir: Path) -> None:
    with running_server(tiny_model_dir, "--slots", "2") as busy:
        body = {"prompt": "Once upon", "max_tokens": 1000, "temperature": 0, "stream": True}
        started = threading.Event()

        def stream() -> None:
            try:
                with httpx.stream("POST", busy.url + "/v1/completions", json=body,
                                  timeout=60) as r:
                    for _ in r.iter_lines():
                        started.set()
            except httpx.HTTPError:
                pass

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for t in threads:
            t.start()
        assert started.wait(30)
        assert busy.stop(signal.SIGTERM) == 143
        for t in threads:
            t.join(30)
        err = busy.stderr()
    assert "Traceback" not in err
    assert "serving" in err and "POST /v1/completions" in err


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}

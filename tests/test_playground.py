"""The playground page (GET /ui) in a real headless Chromium against a real `gpt2cli serve`:
streamed text equals `generate --greedy`, the token counts and tok/s show, GLTR colours every
prompt token, server errors reach the page, Stop ends a stream, and the API key field works.

The browser tests need Debian's `chromium` and `chromium-driver` and the `selenium` package
(which drives /usr/bin/chromedriver; Selenium Manager never runs, nothing is downloaded), and skip
without them; the page's static checks run everywhere.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import run_in_process
from tests.models import MEMORISED_PARAGRAPH
from tests.serverrun import RunningServer, running_server

CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None
)
CHROMEDRIVER = shutil.which("chromedriver")
PAGE = Path(__file__).resolve().parents[1] / "gpt2cli" / "server" / "static" / "playground.html"

PROMPT = "The lighthouse keeper climbed"
MAX_TOKENS = 24
WAIT = 60.0  # seconds: the bound on every wait for the page
API_KEY = "playground-test-key"


def _wait(what: str, condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll `condition` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(memorised_model_dir: Path) -> Iterator[RunningServer]:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    with running_server(memorised_model_dir, "--slots", "2") as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The random model (it rarely samples the end of text, so its streams run long), keyed."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    with running_server(tiny_model_dir, "--api-key", API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium through Debian's chromedriver, given explicitly (no Selenium Manager)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-extensions", "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser: Any, url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url + "/ui")
    assert browser.title == "gpt2cli playground"
    _wait("the page's script", lambda: browser.find_element(By.ID, "generate").is_enabled())


def _set(browser: Any, element_id: str, value: str) -> None:
    """Replace a field's value as a user would: clear it and type."""
    from selenium.webdriver.common.by import By

    element = browser.find_element(By.ID, element_id)
    element.clear()
    if value:
        element.send_keys(value)
    assert element.get_attribute("value") == value


def _text(browser: Any, element_id: str) -> str:
    """An element's exact text (textContent: whitespace as the server sent it)."""
    return browser.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
        element_id,
    )


def _stat(browser: Any, name: str) -> str:
    return browser.execute_script(
        "const b = document.querySelector(`#stats b[data-stat='${arguments[0]}']`);"
        "return b ? b.textContent : null;",
        name,
    )


def _greedy(model: Path, prompt: str, max_tokens: int) -> tuple[str, int]:
    """`gpt2cli generate --greedy`'s continuation of `prompt` and its token count."""
    result = run_in_process("generate", "-m", str(model), "--greedy", "-n", str(max_tokens),
                            "--no-return-full-text", "--format", "json", prompt)
    assert result.returncode == 0, result.err
    sequence = json.loads(result.out)[0]["sequences"][0]
    return sequence["generated_text"], sequence["token_count"]


def _token_count(model: Path, text: str) -> int:
    result = run_in_process("tokenize", "-m", str(model), "--count", "--format", "json", text)
    assert result.returncode == 0, result.err
    return json.loads(result.out)[0]["token_count"]


def _severe_logs(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


class _PageParser(HTMLParser):
    """The page's tags, label targets and inline script and style text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.label_for: set[str] = set()
        self.code: list[str] = []
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "label" and dict(attrs).get("for"):
            self.label_for.add(dict(attrs)["for"] or "")
        self._in_code = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._in_code = False

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.code.append(data)


def test_page_is_self_contained_and_labelled() -> None:
    """No browser needed: one file, nothing fetched from elsewhere, no HTML built from strings,
    a label for every field."""
    text = PAGE.read_text(encoding="utf-8")
    parser = _PageParser()
    parser.feed(text)
    tags = [tag for tag, _ in parser.tags]
    assert tags.count("script") == 1 and tags.count("style") == 1
    for tag, attrs in parser.tags:
        assert not {"src", "href"} & attrs.keys(), f"<{tag}> loads something: {attrs}"
        assert not any(k.startswith("on") for k in attrs), f"<{tag}> has an inline handler"
    assert "link" not in tags and "iframe" not in tags
    code = "".join(parser.code)
    for forbidden in ("http://", "https://", "@import", "url(", "innerHTML", "outerHTML",
                      "insertAdjacentHTML", "document.write", "eval(", "localStorage",
                      "sessionStorage", "document.cookie"):
        assert forbidden not in code, forbidden
    fields = [attrs["id"] for tag, attrs in parser.tags
              if tag in ("input", "textarea", "select") and attrs.get("type") != "hidden"]
    assert fields and all(field in parser.label_for for field in fields), fields


def test_root_serves_the_page_to_a_browser(browser: Any, server: RunningServer) -> None:
    """A browser's GET / (Accept: text/html) gets the playground; /ui always does."""
    browser.get(server.url + "/")
    assert browser.title == "gpt2cli playground"


def test_streams_greedy_text_with_counts(
    browser: Any, server: RunningServer, memorised_model_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    expected, expected_tokens = _greedy(memorised_model_dir, PROMPT, MAX_TOKENS)
    assert expected_tokens == MAX_TOKENS and expected.strip()
    _open(browser, server.url)
    browser.get_log("browser")  # drop what loading logged
    _set(browser, "prompt", PROMPT)
    _set(browser, "max_tokens", str(MAX_TOKENS))
    _set(browser, "temperature", "0")
    browser.find_element(By.ID, "generate").click()

    # Text appears while streaming, and ends as exactly the greedy continuation.
    _wait("streamed text", lambda: _text(browser, "generated"))
    _wait("the stream to end", lambda: _text(browser, "status") == "done")
    assert _text(browser, "generated") == expected
    assert _text(browser, "output") == PROMPT + expected
    assert _text(browser, "error") == ""
    assert browser.find_element(By.ID, "generate").is_enabled()
    assert not browser.find_element(By.ID, "stop").is_enabled()

    # Counts come from the server's usage; tok/s and timings from the page.
    assert _stat(browser, "generated-tokens") == str(MAX_TOKENS)
    assert _stat(browser, "prompt-tokens") == str(_token_count(memorised_model_dir, PROMPT))
    tok_s = float(_stat(browser, "tok-s"))
    assert tok_s > 0
    assert _stat(browser, "time-to-first-token").endswith(" ms")
    assert "finish: length" in _text(browser, "stats")
    assert _severe_logs(browser) == []


def test_gltr_colours_every_prompt_token(
    browser: Any, server: RunningServer, memorised_model_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    prompt = MEMORISED_PARAGRAPH.split(". ")[0] + "."
    n_tokens = _token_count(memorised_model_dir, prompt)
    _open(browser, server.url)
    _set(browser, "prompt", prompt)
    assert not browser.find_element(By.ID, "gltr-panel").is_displayed()
    browser.find_element(By.ID, "gltr").click()
    assert browser.find_element(By.ID, "gltr-panel").is_displayed()

    spans = _wait(
        "coloured tokens",
        lambda: browser.find_elements(By.CSS_SELECTOR, "#gltr-view span.tok"),
    )
    assert len(spans) == n_tokens
    # The spans are the prompt, token by token; the first has no context to rank it.
    assert _text(browser, "gltr-view") == prompt
    classes = [s.get_attribute("class").split() for s in spans]
    assert "rank-none" in classes[0]
    buckets = [next(c for c in cls if c.startswith("rank-")) for cls in classes[1:]]
    assert set(buckets) <= {"rank-1", "rank-3", "rank-10", "rank-beyond"}
    # The model recites this sentence: nearly every token is its first choice.
    assert buckets.count("rank-1") >= len(buckets) - 2, buckets
    # Coloured for real: a rank-1 token's background is the legend's green, not transparent.
    colours = {
        browser.execute_script(
            "return getComputedStyle(arguments[0]).backgroundColor;", span
        )
        for span, cls in zip(spans[1:], buckets, strict=True) if cls == "rank-1"
    }
    assert len(colours) == 1 and "rgba(0, 0, 0, 0)" not in colours
    assert spans[1].get_attribute("title").startswith("rank 1, p = ")
    assert _text(browser, "gltr-stats").startswith(f"{n_tokens} tokens: ")

    # A prompt the model never saw ranks some tokens lower: other buckets appear.
    _set(browser, "prompt", "Purple elephants negotiate tax treaties with submarine volcanoes")
    _wait(
        "GLTR to follow the edited prompt",
        lambda: _text(browser, "gltr-view").startswith("Purple"),
    )
    odd = browser.find_elements(By.CSS_SELECTOR, "#gltr-view span.tok.rank-beyond")
    assert odd, "an unseen prompt should have tokens beyond the top 10"

    browser.find_element(By.ID, "gltr").click()
    assert not browser.find_element(By.ID, "gltr-panel").is_displayed()
    assert _severe_logs(browser) == []


def test_server_error_shows_in_page(browser: Any, server: RunningServer) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server.url)
    _set(browser, "prompt", PROMPT)
    _set(browser, "max_tokens", "5000")  # past the 1024-token context: a 400 naming max_tokens
    browser.find_element(By.ID, "generate").click()
    _wait("the error", lambda: browser.find_element(By.ID, "error").is_displayed())
    message = _text(browser, "error")
    assert message.startswith("Error 400 (max_tokens): ")
    assert "maximum context length is 1024 tokens" in message
    assert _text(browser, "generated") == ""
    assert browser.find_element(By.ID, "generate").is_enabled()


def _metric(server: RunningServer, name: str) -> float:
    """One unlabelled sample from GET /metrics."""
    import httpx

    auth = {"Authorization": f"Bearer {API_KEY}"}
    for line in httpx.get(server.url + "/metrics", headers=auth, timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_stop_cancels_the_stream(browser: Any, keyed_server: RunningServer) -> None:
    from selenium.webdriver.common.by import By

    server = keyed_server
    generated_before = _metric(server, "gpt2cli_generated_tokens_total")
    _open(browser, server.url)
    _set(browser, "api_key", API_KEY)
    _set(browser, "prompt", "Once upon a time,")
    _set(browser, "max_tokens", "1000")
    _set(browser, "temperature", "1")
    _set(browser, "seed", "1")
    browser.find_element(By.ID, "generate").click()
    _wait("streamed text", lambda: _text(browser, "generated"))
    browser.find_element(By.ID, "stop").click()
    _wait("the page to stop", lambda: _text(browser, "status") in ("stopped", "done"))
    assert _text(browser, "status") == "stopped", _text(browser, "stats")
    assert browser.find_element(By.ID, "generate").is_enabled()
    assert _text(browser, "error") == ""
    # The aborted fetch closed the connection: the server cancelled the row and freed its slot.
    _wait("the slot to free", lambda: _metric(server, "gpt2cli_requests_running") == 0)
    _wait("the request to end", lambda: _metric(server, "gpt2cli_requests_in_flight") == 0)
    assert _metric(server, "gpt2cli_generated_tokens_total") - generated_before < 1000
    # The next request from the page is served normally.
    _set(browser, "max_tokens", "4")
    browser.find_element(By.ID, "generate").click()
    _wait("the next stream", lambda: _text(browser, "status") == "done")
    assert _stat(browser, "generated-tokens") == "4"


def test_api_key_field(browser: Any, keyed_server: RunningServer) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, keyed_server.url)
    _set(browser, "prompt", PROMPT)
    _set(browser, "max_tokens", "4")
    browser.find_element(By.ID, "generate").click()
    _wait("the 401", lambda: browser.find_element(By.ID, "error").is_displayed())
    assert _text(browser, "error").startswith("Error 401")

    _set(browser, "api_key", API_KEY)
    browser.find_element(By.ID, "generate").click()
    _wait("the stream to end", lambda: _text(browser, "status") == "done")
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert _stat(browser, "generated-tokens") == "4"
    # The key lives in the page only: nothing is stored.
    assert browser.execute_script("return localStorage.length + sessionStorage.length;") == 0
    assert "playground" not in browser.get_cookies().__repr__()

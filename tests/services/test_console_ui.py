"""The web console (/ui) in a real browser: Debian's `chromium`, headless, driven by Selenium through
Debian's `chromedriver` (both given by path, so Selenium Manager downloads nothing), against `molm3d
serve` with the token set: the shared `served` stack, and for a bulk job the Kafka-backed `bulk_stack`.

What the page shows is compared with what the same HTTP API answers for the same request. Screenshots
of each page go to .cache/screenshots/console/ (git-ignored); docs/console-*.png are copies of them.
`make setup` installs selenium and, as root with apt-get, chromium and chromium-driver: without any of
them every test here fails, saying which is missing (a skipped browser test would pass for nothing)."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import TOKEN
from .test_bulk import qm9_smiles

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as err:  # the `browser` fixture fails each test with this
    MISSING_SELENIUM = f"selenium is not installed ({err}); `make setup` installs it"
else:
    MISSING_SELENIUM = ""

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[2] / ".cache" / "screenshots" / "console"
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
HOMO_QUESTION = "What is the HOMO energy of this molecule?"  # the page's HOMO suggestion
SEARCH_TEXT = "a non-steroidal anti-inflammatory drug"
WAIT_S = 240  # a caption of the tiny model takes seconds; a busy 2-core machine, much longer


def shown_value(value: float) -> str:
    """A number as the page writes it (console.js formatValue)."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}" if abs(value) >= 1000 else f"{value:.3f}"


def api(base: str, path: str, body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict | bytes]:
    """(status, JSON body or raw bytes) of one call to the stack, as the page makes it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            raw, status, kind = r.read(), r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        raw, status, kind = err.read(), err.code, err.headers.get("content-type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


def missing_browser() -> str:
    """Why no browser can be started here, or ""."""
    if MISSING_SELENIUM:
        return MISSING_SELENIUM
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return (
            f"{' and '.join(missing)} missing: `make setup` installs Debian's chromium and chromium-driver "
            "as root with apt-get (or: apt-get install chromium chromium-driver)"
        )
    return ""


@pytest.fixture(scope="module")
def browser(downloads: Path):
    if reason := missing_browser():
        pytest.fail(reason, pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--use-angle=swiftshader",  # WebGL on the CPU (SwiftShader): 3Dmol.js draws with WebGL
        "--enable-unsafe-swiftshader",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = WAIT_S, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d), what)


def shown(driver, selector: str) -> bool:
    elements = driver.find_elements(By.CSS_SELECTOR, selector)
    return bool(elements) and elements[0].is_displayed()


def text_of(driver, selector: str) -> str:
    return driver.execute_script("return document.querySelector(arguments[0]).textContent", selector)


def visible_sections(driver) -> list[str]:
    return [s.get_attribute("id") for s in driver.find_elements(By.CSS_SELECTOR, "main > section") if s.is_displayed()]


def screenshot(driver, name: str) -> Path:
    """The whole page (not only the window) as PNG under SHOTS. Captured beyond the viewport the page
    has no scroll bar, so it is laid out at the window's full width: the clip takes that width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    width = driver.execute_script("return window.innerWidth")
    clip = {"x": 0, "y": 0, "width": max(width, size["width"]), "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = SHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def csp_violations(driver) -> list[str]:
    """The browser's console lines about the Content-Security-Policy since the last call."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def assert_fits(driver, page: str) -> None:
    """No sideways scrolling (nothing wider than the window less its scroll bar) at 1280x800 and in a
    400 px wide window, whose screenshot is `{page}-narrow`."""
    fits = "const e = document.documentElement; return [e.scrollWidth, e.clientWidth]"
    scroll_width, client_width = driver.execute_script(fits)
    assert scroll_width <= client_width <= 1280
    driver.set_window_size(400, 800)
    try:
        wait(driver, lambda d: d.execute_script("return window.innerWidth") <= 400, 10, "the narrow window")
        scroll_width, client_width = driver.execute_script(fits)
        assert scroll_width <= client_width <= 400, page
        screenshot(driver, f"{page}-narrow")
    finally:
        driver.set_window_size(1280, 800)
    wait(driver, lambda d: d.execute_script("return window.innerWidth") == 1280, 10, "the wide window again")


def sign_in(driver, base: str) -> None:
    """Opens the console of `base` and signs in, unless this tab already holds the token for it."""
    driver.get(f"{base}/ui#/molecule")
    wait(driver, lambda d: shown(d, "#token") or shown(d, "#nav"), 30, "the login or the pages")
    if shown(driver, "#token"):
        driver.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    wait(driver, lambda d: shown(d, "#nav"), 30, "the pages after signing in")


def show_molecule(driver, smiles: str) -> None:
    field = driver.find_element(By.ID, "smiles")
    field.clear()
    field.send_keys(smiles, Keys.ENTER)


def test_nothing_but_the_login_before_a_token_is_accepted(served, browser):
    browser.get(f"{served.http}/ui#/search")
    wait(browser, lambda d: shown(d, "#token"), 30, "the login")
    assert visible_sections(browser) == ["login"]
    assert not shown(browser, "#nav") and not shown(browser, "#logout")
    data_calls = "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/v1/'))"
    assert browser.execute_script(data_calls) == []  # no token, no data call

    browser.find_element(By.ID, "token").send_keys("not-the-token", Keys.ENTER)
    wait(browser, lambda d: d.find_element(By.ID, "login-error").text, 30, "the refusal")
    assert browser.find_element(By.ID, "login-error").get_attribute("data-code") == "unauthenticated"
    assert "refused" in browser.find_element(By.ID, "login-error").text
    assert visible_sections(browser) == ["login"]
    assert browser.execute_script("return sessionStorage.getItem('molm3d.token')") is None
    screenshot(browser, "login")

    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys(TOKEN, Keys.ENTER)  # Enter submits
    wait(browser, lambda d: shown(d, "#nav"), 30, "the pages")
    assert visible_sections(browser) == ["page-search"]  # the page the address asked for
    assert f"{served.http}/v1/models" in browser.execute_script(data_calls)  # (the check above sees calls)
    assert browser.execute_script("return sessionStorage.getItem('molm3d.token')") == TOKEN
    _, models = api(served.http, "/v1/models")
    assert browser.find_element(By.ID, "model-id").text == f"model {models['data'][0]['id']}"

    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: shown(d, "#token"), 30, "the login after logging out")
    assert visible_sections(browser) == ["login"]
    assert browser.execute_script("return sessionStorage.getItem('molm3d.token')") is None
    assert csp_violations(browser) == []


def test_the_molecule_page_shows_what_the_model_encoded_said_and_answered(served, browser):
    molecule = {"text": ASPIRIN, "format": "smiles", "id": ""}  # what the page sends
    status, expected = api(served.http, "/v1/molecule", {"molecule": molecule})
    assert status == 200, expected
    conformer = expected["conformer"]
    sign_in(browser, served.http)
    show_molecule(browser, ASPIRIN)
    shows = "return document.querySelector(\"dd[data-fact='canonical SMILES']\")?.textContent"
    wait(browser, lambda d: d.execute_script(shows) == conformer["smiles"], 60, "the molecule")
    wait(browser, lambda d: d.find_element(By.ID, "caption").get_attribute("data-state") in ("done", "error"))

    # 1. The viewer holds the encoded atoms, where the encoder had them, and draws them (WebGL).
    atoms = browser.execute_script(
        "return window.molm3dConsole.viewer.getModel().selectedAtoms({}).map(a => [a.elem, a.x, a.y, a.z])"
    )
    assert len(atoms) == len(conformer["elements"]) == 13
    assert [a[0] for a in atoms] == conformer["elements"]
    for (_, *xyz), i in zip(atoms, range(len(atoms)), strict=True):
        assert xyz == pytest.approx(conformer["coordinates"][3 * i : 3 * i + 3], abs=1e-3)
    assert browser.execute_script("return !!document.querySelector('#viewer canvas').getContext")
    drawn, pixels = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const image = new Image();
        image.onload = () => {
          const canvas = document.createElement("canvas");
          canvas.width = image.width; canvas.height = image.height;
          const g = canvas.getContext("2d"); g.drawImage(image, 0, 0);
          const data = g.getImageData(0, 0, canvas.width, canvas.height).data;
          let n = 0;
          for (let i = 0; i < data.length; i += 4) if (data[i] < 245 || data[i + 1] < 245 || data[i + 2] < 245) n++;
          done([n, canvas.width * canvas.height]);
        };
        image.onerror = () => done([0, 0]);
        image.src = window.molm3dConsole.viewer.pngURI();"""
    )
    assert pixels > 0 and drawn / pixels > 0.005, (drawn, pixels)  # not a blank (white) canvas

    # 2. Provenance and the 2D depiction.
    fact = lambda name: text_of(browser, f"dd[data-fact='{name}']")  # noqa: E731
    assert fact("canonical SMILES") == conformer["smiles"] and fact("InChIKey") == conformer["inchikey"]
    assert fact("method") == f"ETKDG v3 from the SMILES graph + MMFF94 ({conformer['method']})"
    assert fact("warnings") == ("none" if not conformer["warnings"] else "".join(conformer["warnings"]))
    depiction = "const i = document.getElementById('depiction'); return i.complete && i.naturalWidth"
    assert browser.execute_script(depiction) > 0

    # 3. The caption, streamed, is the gateway's caption of the same molecule with the same decoding.
    caption = browser.find_element(By.ID, "caption")
    assert caption.get_attribute("data-state") == "done", text_of(browser, "#caption-meta")
    status, answer = api(served.http, "/v1/caption", {"molecule": molecule})
    assert status == 200, answer
    assert text_of(browser, "#caption") == answer["text"] != ""
    if answer.get("num_tokens", 0) > 1:
        assert int(caption.get_attribute("data-chunks")) > 1  # token by token, not in one piece

    # 4. Property heads: the stack's checkpoint has trained ones (conftest): each with its value and unit.
    assert expected["properties_trained"] and expected["properties"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#properties-table tbody tr")
    assert [r.get_attribute("data-property") for r in rows] == [p["name"] for p in expected["properties"]]
    for row, p in zip(rows, expected["properties"], strict=True):
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells == [p["name"], shown_value(p["value"]), p["unit"]], (cells, p)

    # 5. The HOMO suggestion: the page shows exactly what /v1/ask answers, its parsed value and unit, and
    # the HOMO head's value in eV beside it. (The tiny random test LM answers gibberish: whether its text
    # holds a number is up to chance, so that value is compared with /v1/ask's, not required.)
    browser.find_element(By.CSS_SELECTOR, "#suggestions button[data-key='homo']").click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#answers li").get_attribute("data-state") != "asking")
    item = browser.find_element(By.CSS_SELECTOR, "#answers li")
    status, asked = api(served.http, "/v1/ask", {"molecule": molecule, "question": HOMO_QUESTION})
    assert status == 200, asked
    assert item.get_attribute("data-state") == "done"
    assert text_of(browser, "#answers li .question") == HOMO_QUESTION
    assert text_of(browser, "#answers li .answer-text") == asked["text"]
    assert item.get_attribute("data-has-value") == ("true" if asked.get("has_value") else "false")
    parsed = text_of(browser, "#answers li .value")
    if asked.get("has_value"):
        assert float(item.get_attribute("data-value")) == asked["value"]
        assert item.get_attribute("data-unit") == asked.get("unit", "")
        assert asked.get("unit", "") in parsed
    else:
        assert parsed == "no number in the answer"
    homo = next(p for p in expected["properties"] if p["name"] == "homo")
    head = text_of(browser, "#answers li .head[data-head='homo']")
    assert head == f"property head homo: {shown_value(homo['value'])} eV"  # a HOMO value in eV, always
    screenshot(browser, "molecule")

    # 6. Keyboard only: a typed question, Tab to the Ask button, Enter.
    question = browser.find_element(By.ID, "question")
    question.clear()
    question.send_keys("What is the molecular weight of this molecule?", Keys.TAB)
    focused = browser.switch_to.active_element
    assert (focused.tag_name, focused.get_attribute("type"), focused.text) == ("button", "submit", "Ask")
    focused.send_keys(Keys.ENTER)
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#answers li[data-state='done']")) == 2)
    mw = next(p for p in expected["properties"] if p["name"] == "mw")
    assert text_of(browser, "#answers li .head") == f"property head mw: {shown_value(mw['value'])} g/mol"

    # 7. Readable at 1280x800 and on a narrow screen.
    assert_fits(browser, "molecule")
    assert csp_violations(browser) == []


def test_an_invalid_smiles_shows_its_code_next_to_the_input(served, browser):
    sign_in(browser, served.http)
    show_molecule(browser, "C1CC(")
    wait(browser, lambda d: d.find_element(By.ID, "molecule-error").text, 60, "the error")
    status, answer = api(served.http, "/v1/molecule", {"molecule": {"text": "C1CC(", "format": "smiles"}})
    assert status == 400 and answer["error"]["code"] == "invalid_smiles"
    error = browser.find_element(By.ID, "molecule-error")
    assert error.get_attribute("data-code") == "invalid_smiles"
    assert text_of(browser, "#molecule-error code") == "invalid_smiles"
    assert text_of(browser, "#molecule-error .message") == answer["error"]["message"]  # RDKit's lines as they are
    # next to the input: in its form, named by the field's aria-describedby, and no stale result below
    assert browser.find_element(By.ID, "smiles").get_attribute("aria-describedby") == "molecule-error"
    assert error.find_element(By.XPATH, "ancestor::form").get_attribute("id") == "molecule-form"
    assert not shown(browser, "#molecule-result")
    screenshot(browser, "molecule-error")


def test_an_overloaded_stack_reads_busy_retry_in_n_seconds(served, browser):
    """The gateway's 429 as the page shows it. A real overload needs a burst that fills the LM
    (test_openai.py makes one, in seconds to minutes); here the page's next /v1/ask gets the answer the
    gateway gives when admission control refuses (http.error_response of admission.py's error, body and
    Retry-After header) in place of the network's."""
    import grpc

    from molm3d_services.common.errors import ServiceError
    from molm3d_services.gateway.http import error_response

    reason = "an answer would take about 9.4 s, past this request's deadline of 5 s"
    refusal = error_response(
        ServiceError.make(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded", f"busy: {reason}; retry in 3 s", "gateway", "", 2100
        )
    )
    assert refusal.status_code == 429 and refusal.headers["retry-after"] == "3"
    sign_in(browser, served.http)
    show_molecule(browser, "CCO")
    shows = "return document.querySelector(\"dd[data-fact='canonical SMILES']\")?.textContent"
    wait(browser, lambda d: d.execute_script(shows) == "CCO", 60, "the molecule")
    browser.execute_script(
        """const [body, status, retryAfter] = arguments;
        const real = window.fetch;
        window.fetch = (url, init) => {
          if (url !== "/v1/ask") return real(url, init);
          window.fetch = real;  // this call only
          const headers = {"content-type": "application/json", "retry-after": retryAfter};
          return Promise.resolve(new Response(body, {status, headers}));
        };""",
        refusal.body.decode(),
        refusal.status_code,
        refusal.headers["retry-after"],
    )
    browser.find_element(By.CSS_SELECTOR, "#suggestions button[data-key='lumo']").click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#answers li").get_attribute("data-state") != "asking")
    item = browser.find_element(By.CSS_SELECTOR, "#answers li")
    assert item.get_attribute("data-state") == "error"
    assert text_of(browser, "#answers li .answer-text code") == "overloaded"
    assert text_of(browser, "#answers li .answer-text .message") == f"busy, retry in 3 s ({reason})"
    wait(browser, lambda d: d.find_element(By.ID, "caption").get_attribute("data-state") in ("done", "error"))


def test_a_chosen_sdf_file_is_shown_with_its_own_3d_coordinates(served, browser, tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(ASPIRIN))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    path = tmp_path / "aspirin-3d.sdf"
    path.write_text(Chem.MolToMolBlock(mol) + "$$$$\n")
    molecule = {"text": path.read_text(), "format": "sdf", "id": path.name}  # what the page sends
    status, expected = api(served.http, "/v1/molecule", {"molecule": molecule})
    assert status == 200, expected
    assert expected["conformer"]["method"] == "input_3d"

    sign_in(browser, served.http)
    browser.find_element(By.ID, "molecule-file").send_keys(str(path))
    method = "return document.querySelector(\"dd[data-fact='method']\")?.textContent"
    wait(browser, lambda d: d.execute_script(method) == "input 3D coordinates, kept as given (input_3d)", 60)
    atoms = browser.execute_script(
        "return window.molm3dConsole.viewer.getModel().selectedAtoms({}).map(a => [a.elem, a.x, a.y, a.z])"
    )
    coordinates = expected["conformer"]["coordinates"]
    assert [a[0] for a in atoms] == expected["conformer"]["elements"]
    assert [c for a in atoms for c in a[1:]] == pytest.approx(coordinates, abs=1e-3)
    assert text_of(browser, "dd[data-fact='input']") == "sdf"
    wait(browser, lambda d: d.find_element(By.ID, "caption").get_attribute("data-state") in ("done", "error"))


def test_a_text_search_lists_ranked_hits_with_depictions_and_opens_one(served, browser):
    sign_in(browser, served.http)
    browser.find_element(By.CSS_SELECTOR, "#nav a[data-page='search']").click()
    wait(browser, lambda d: shown(d, "#search-query"), 10, "the search page")
    browser.find_element(By.ID, "search-query").send_keys(SEARCH_TEXT, Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li.hit"), 60, "the hits")
    status, expected = api(served.http, "/v1/retrieve", {"text": SEARCH_TEXT, "k": 10})
    assert status == 200, expected
    hits = browser.find_elements(By.CSS_SELECTOR, "#search-results li.hit")
    scores = [float(h.get_attribute("data-score")) for h in hits]
    assert len(hits) == len(expected["hits"]) >= 5  # the molecule index: the example library's molecules
    assert scores == [h["score"] for h in expected["hits"]] == sorted(scores, reverse=True)
    assert [h.find_element(By.CSS_SELECTOR, "strong").text for h in hits] == [
        h["fields"].get("name") or h["id"] for h in expected["hits"]
    ]
    loaded = "return [...document.querySelectorAll('#search-results img.thumb')].map(i => i.complete && i.naturalWidth)"
    wait(browser, lambda d: all(d.execute_script(loaded)), 60, "the depictions")
    assert len(browser.execute_script(loaded)) == len(hits)
    screenshot(browser, "search")
    assert_fits(browser, "search")

    first = expected["hits"][0]["fields"]["smiles"]
    status, molecule = api(served.http, "/v1/molecule", {"molecule": {"text": first, "format": "smiles"}})
    assert status == 200, molecule
    hits[0].find_element(By.CSS_SELECTOR, "a.hit-main").send_keys(Keys.ENTER)  # a link: keyboard opens it
    opened = "return document.querySelector(\"dd[data-fact='canonical SMILES']\")?.textContent"
    wait(browser, lambda d: d.execute_script(opened) == molecule["conformer"]["smiles"], 60, "the hit's molecule")
    assert shown(browser, "#page-molecule") and shown(browser, "#molecule-result")
    assert browser.find_element(By.ID, "smiles").get_attribute("value") == first
    wait(browser, lambda d: d.find_element(By.ID, "caption").get_attribute("data-state") in ("done", "error"))

    # molecule -> texts
    browser.back()
    wait(browser, lambda d: shown(d, "#search-query"), 10, "the search page again")
    browser.find_element(By.CSS_SELECTOR, "input[name='mode'][value='molecule']").click()
    query = browser.find_element(By.ID, "search-query")
    query.clear()
    query.send_keys(ASPIRIN, Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li.hit p"), 60, "the texts")
    status, texts = api(served.http, "/v1/retrieve", {"molecule": {"text": ASPIRIN, "format": "smiles"}, "k": 10})
    shown_texts = [p.text for p in browser.find_elements(By.CSS_SELECTOR, "#search-results li.hit p")]
    assert shown_texts == [h["fields"]["text"] for h in texts["hits"]]
    assert csp_violations(browser) == []


def test_the_bulk_page_says_a_stack_without_kafka_cannot_run_jobs(served, browser, tmp_path):
    sign_in(browser, served.http)
    browser.get(f"{served.http}/ui#/bulk")
    wait(browser, lambda d: shown(d, "#bulk-file"), 30, "the bulk page")
    path = tmp_path / "two.smi"
    path.write_text("CCO ethanol\nc1ccccc1 benzene\n")
    browser.find_element(By.ID, "bulk-file").send_keys(str(path))
    browser.find_element(By.CSS_SELECTOR, "#bulk-form button[type='submit']").click()
    wait(browser, lambda d: d.find_element(By.ID, "bulk-error").text, 60, "the error")
    error = browser.find_element(By.ID, "bulk-error")
    assert error.get_attribute("data-code") == "bulk_unavailable"
    assert "bulk jobs need Kafka" in error.text and "--kafka" in error.text


def test_a_20_molecule_bulk_job_reaches_100_percent_with_its_failures_listed(bulk_stack, browser, downloads, tmp_path):
    base = bulk_stack.http
    smiles = qm9_smiles(20, start=16000)
    invalid = {3: "C1CC(", 11: "c1ccccc"}
    for index, bad in invalid.items():
        smiles[index] = bad
    path = tmp_path / "twenty.smi"
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(smiles)))

    sign_in(browser, base)
    browser.find_element(By.CSS_SELECTOR, "#nav a[data-page='bulk']").click()
    wait(browser, lambda d: shown(d, "#bulk-file"), 10, "the bulk page")
    browser.find_element(By.ID, "bulk-file").send_keys(str(path))
    browser.find_element(By.ID, "bulk-max-tokens").send_keys("8")
    browser.find_element(By.CSS_SELECTOR, "#bulk-form button[type='submit']").click()
    status_line = browser.find_element(By.ID, "bulk-status")
    wait(browser, lambda d: status_line.get_attribute("data-complete") == "true", 600, "the job's end")

    job_id = browser.find_element(By.ID, "bulk-job-id").text
    status, state = api(base, f"/v1/bulk/jobs/{job_id}")
    assert status == 200, state
    assert (state["total"], state["done"], state["failed"], state["complete"]) == (20, 18, 2, True)
    assert status_line.get_attribute("data-percent") == "100"
    assert browser.find_element(By.ID, "bulk-progress").get_attribute("value") == "100"
    assert status_line.text == "100 %: 18 done, 2 failed, 0 pending of 20 (complete)"
    rows = [
        [c.get_attribute("textContent") for c in r.find_elements(By.TAG_NAME, "td")]
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.failure")
    ]
    assert rows == [[str(f["index"]), f["record_id"], f["code"], f["message"]] for f in state["failures"]]
    reason = browser.find_element(By.CSS_SELECTOR, "tr.failure td.reason")
    lines = state["failures"][0]["message"].splitlines()
    assert len(lines) > 1 and len(reason.text.splitlines()) == len(lines)  # shown as RDKit's lines
    assert [r[0] for r in rows] == ["3", "11"] and {r[2] for r in rows} == {"invalid_smiles"}
    screenshot(browser, "bulk")
    assert_fits(browser, "bulk")

    # Downloads: each file as the results route gives it (fetched with the token, saved by the browser).
    for fmt in ("jsonl", "csv", "sdf"):
        browser.find_element(By.CSS_SELECTOR, f".downloads button[data-format='{fmt}']").click()
        saved = downloads / f"{job_id}.{fmt}"
        wait(browser, lambda d, saved=saved: saved.exists() and saved.stat().st_size > 0, 60, f"{saved.name}")
        time.sleep(0.2)  # the browser renames the finished file into place; let it close it
        status, raw = api(base, f"/v1/bulk/jobs/{job_id}/results?format={fmt}")
        assert status == 200 and saved.read_bytes() == raw
    lines = [json.loads(line) for line in (downloads / f"{job_id}.jsonl").read_text().splitlines()]
    assert len(lines) == 18  # each answered item once
    assert csp_violations(browser) == []

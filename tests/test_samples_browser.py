"""The sample page in a real headless browser (Debian's chromium): loads without errors, shows
the images and the completions, folds long ones, runs none of the model's text; a screenshot.

Needs ``chromium`` and ``chromedriver``; ``tests/browser/install.sh`` (run by ``make test``)
installs them. Without them the test is skipped with a warning naming that script.
Set RLVR_SCREENSHOT_DIR to keep the screenshot.
"""

import os
import shutil
import warnings

import pytest
from PIL import Image, ImageStat

from rlvr.data import Example
from rlvr.rewards import parse_gold
from rlvr.sample_pages import write_sample_page
from tests.browser.webdriver import Browser, find_browser
from tests.test_samples import make_rows

BROWSER = find_browser()


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None:
        message = ("chromium/chromedriver not found: the browser test of the sample page is SKIPPED. "
                   "Install them with: sh tests/browser/install.sh (as root, Debian)")
        warnings.warn(message, stacklevel=2)
        pytest.skip(message)
    with Browser(*BROWSER) as b:
        yield b


def test_sample_page_in_headless_chromium(browser, tmp_path):
    page = write_sample_page(str(tmp_path / "run"), 100, make_rows(tmp_path))
    browser.open(page)
    browser.console()  # drop anything logged before the page (none expected)
    browser.open(page)
    state = browser.js("""
        const imgs = Array.from(document.images);
        return {
          title: document.title,
          ready: document.readyState,
          images: imgs.length,
          loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
          shown: imgs.filter(i => i.getBoundingClientRect().width >= 100).length,
          articles: document.querySelectorAll('article').length,
          text: document.body.innerText,
          pwned: window.__pwned === undefined ? null : window.__pwned,
          scripts: document.scripts.length,
          folded: Array.from(document.querySelectorAll('details')).map(d => d.open),
        };""")
    errors = [e for e in browser.console() if e.get("level") in ("SEVERE", "ERROR")]
    assert errors == [], errors
    assert state["ready"] == "complete" and state["title"] == "run \u00b7 step 100"
    assert state["articles"] == 4
    assert state["images"] == 3 and state["loaded"] == 3, state  # embedded images decode
    assert state["shown"] == 3  # and are shown at a readable size
    assert state["pwned"] is None and state["scripts"] == 0  # the model's <script> is text, not code
    assert "</pre><script>window.__pwned = 1</script>" in state["text"]  # shown literally
    assert "Which digit is <red>?" in state["text"] and "Gold answer" in state["text"]
    assert state["folded"] == [False]  # the long completion starts folded...
    assert "Step 0: the colour" in state["text"] and "THE-VERY-END" not in state["text"]  # ...showing its start

    screenshot = browser.screenshot(str(tmp_path / "folded.png"))
    browser.click("details > summary")  # a person clicks "show the whole completion"
    opened = browser.js("""
        const d = document.querySelector('details');
        const full = d.querySelector('pre.completion');
        return {open: d.open, height: full.getBoundingClientRect().height, text: document.body.innerText};""")
    assert opened["open"] and opened["height"] > 500
    assert "THE-VERY-END" in opened["text"] and "Step 79:" in opened["text"]  # folded, never cut

    # The screenshot shows a real page: the size of the page, colourful images, text.
    image = Image.open(screenshot).convert("RGB")
    assert image.size[0] >= 1000 and image.size[1] >= 900, image.size
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 20
    reds = sum(n for n, (r, g, b) in image.getcolors(1 << 22) if r > 180 and g < 80 and b < 80)
    blues = sum(n for n, (r, g, b) in image.getcolors(1 << 22) if b > 180 and r < 80 and g < 80)
    assert reds > 5000 and blues > 2000, (reds, blues)  # the red and blue test images are on screen
    keep = os.environ.get("RLVR_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(screenshot, os.path.join(keep, "sample_page.png"))
    after = [e for e in browser.console() if e.get("level") in ("SEVERE", "ERROR")]
    assert after == [], after  # nor after the click


def test_tool_rollout_page_in_headless_chromium(browser, tmp_path):
    from rlvr.devtools.make_tiny_model import build_tokenizer
    from rlvr.samples import rollout_rows
    from tests.test_samples import TOOL_TURNS, tool_response

    tokenizer = build_tokenizer()
    example = Example(id="t0", question="Which digit?", answer="7", gold=parse_gold("7"), images=[])
    rows = rollout_rows([example], [tool_response(tokenizer)], [TOOL_TURNS[-1][1]], [1.0], 1, 1, tokenizer=tokenizer)
    page = write_sample_page(str(tmp_path / "run"), 1, rows)
    browser.open(page)
    state = browser.js("""
        const turns = Array.from(document.querySelectorAll('.turn'));
        const colour = s => getComputedStyle(document.querySelector('.badge.status.' + s)).color;
        return {
          kinds: turns.map(t => t.className),
          images: turns.map(t => Array.from(t.querySelectorAll('img')).filter(
                    i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width >= 30).length),
          error: colour('bad'), ok: colour('ok'),
          text: document.body.innerText,
        };""")
    errors = [e for e in browser.console() if e.get("level") in ("SEVERE", "ERROR")]
    assert errors == [], errors
    assert state["kinds"] == ["turn model", "turn observation status-error", "turn model",
                              "turn observation status-ok", "turn model"]
    assert state["images"] == [0, 0, 0, 2, 0]  # the tool's two images decode and are shown, in its turn
    assert state["error"] == "rgb(198, 40, 40)" and state["ok"] == "rgb(26, 127, 55)"  # red and green
    for _, text, *_ in TOOL_TURNS:
        assert text in state["text"]
    assert "2 tool calls \u00b7 1 failed" in state["text"] and "ended: answer" in state["text"]

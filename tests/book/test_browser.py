"""The built book, opened in a real headless browser (Debian's chromium via selenium + chromedriver).

For every page listed in ``_toc.yml`` this checks what a reader would notice:
the page loads, MathJax turned every equation into ``mjx-container`` elements (and no raw
TeX delimiters are left), every ``<img>`` decoded, no code cell or printout scrolls sideways at 1440 px
(folded cells are unfolded for the check), no test marker (``NBVAL``) or writer's placeholder
(``SWEEP_TEXT``, ``TODO``) shows in the text,
and no request left ``localhost``
(the book must work offline: no CDN, web font or inventory). A full-page screenshot of each
page is kept under ``test-artifacts/screenshots/`` for a human to look at.

The book is served by a ``http.server`` on 127.0.0.1 started here; chromium's resolver maps every
other host to NOTFOUND, so an outside request fails *and* is still recorded in the
performance log, where the test sees it.

Build first with ``make book`` (``make test`` does). Without ``_build/html`` the tests skip,
except under ``CI``, where a missing build is a failure. ``NORMLAB_BOOK_HTML`` points the
test at another build folder.
"""
import base64
import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("NORMLAB_BOOK_HTML", REPO / "_build" / "html"))
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WINDOW = (1440, 900)  # a laptop screen: both sidebars and the article side by side
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    # Every host but the local server resolves to nothing: offline, yet attempts stay visible.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
# Schemes that never touch the network (chrome:// is the browser's own UI, e.g. its start page).
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-error"}


def toc_pages():
    """Every page of _toc.yml (root and files), as paths relative to the HTML root."""
    toc = (REPO / "_toc.yml").read_text()
    names = re.findall(r"^\s*(?:root|-?\s*file):\s*(\S+)\s*$", toc, flags=re.M)
    assert names, "no pages found in _toc.yml"
    return [name.removesuffix(".md").removesuffix(".ipynb") + ".html" for name in names]


def require_build():
    if (HTML / "index.html").is_file():
        return
    message = f"{HTML}/index.html is missing: run `make book` first"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so a missing build is a failure)")
    pytest.skip(message)


def require_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    message = f"{missing} not found: `make browser` installs Debian's chromium and chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def server():
    require_build()
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    driver.get("about:blank")
    yield driver
    driver.quit()


def requested_urls(driver):
    """URLs the page asked for, from chromium's DevTools performance log (drains the log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def is_local(url, server):
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES or parts.scheme == "file":
        return True
    return parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost")


# Resolves when MathJax has typeset the page; null when the page loaded no MathJax.
WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done(null); return; }
MathJax.startup.promise.then(() => done('ok'), (e) => done('error: ' + e));
"""

# Forces lazy images to load and waits until each one has either decoded or failed.
WAIT_FOR_IMAGES = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
imgs.forEach((img) => { img.loading = 'eager'; });
Promise.all(imgs.map((img) => img.decode().catch(() => null))).then(() =>
  done(imgs.map((img) => ({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0}))));
"""


# The page's main text without code, outputs and rendered math: where unrendered TeX would show.
PROSE_TEXT = """
const main = document.querySelector('main').cloneNode(true);
main.querySelectorAll('pre, code, .cell_output, .output, mjx-container, script, style').forEach((e) => e.remove());
return main.innerText;
"""


# Code cells whose code or printed output is wider than its box (it would scroll sideways). Folded cells
# (hide-input: <details>) are opened for the measurement and closed again afterwards.
OVERFLOWING_CODE_CELLS = """
const folded = Array.from(document.querySelectorAll('main details:not([open])'));
folded.forEach((d) => { d.open = true; });
const wide = Array.from(document.querySelectorAll('main .cell_input pre, main .cell_output pre'))
  .filter((pre) => pre.scrollWidth > pre.clientWidth + 1)
  .map((pre) => ({width: pre.scrollWidth, box: pre.clientWidth,
                  line: pre.innerText.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), '')}));
folded.forEach((d) => { d.open = false; });
return wide;
"""


# Resolves once web fonts are in and two frames have been painted, scrolled to the top-left.
SETTLE = """
const done = arguments[arguments.length - 1];
window.scrollTo(0, 0);
document.fonts.ready.then(() => requestAnimationFrame(() => requestAnimationFrame(() => done(true))));
"""


def full_page_screenshot(driver, path):
    """Make the viewport as tall as the page, let it lay out, capture it, and restore the viewport.

    (Chromium's captureBeyondViewport sometimes paints tall pages shifted sideways; a real
    viewport of the page's height does not.)
    """
    width, _ = WINDOW
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        driver.execute_async_script(SETTLE)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(shot["data"]))


@pytest.mark.slow
@pytest.mark.parametrize("page", toc_pages())
def test_page_renders_offline(browser, server, page):
    assert (HTML / page).is_file(), f"{page} is in _toc.yml but was not built"
    requested_urls(browser)  # drain entries left by the previous page
    browser.get(f"{server}/{page}")

    status = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0]; return n ? n.responseStatus : null;"
    )
    assert status == 200, f"{page}: HTTP status {status}"
    headings = browser.execute_script("return Array.from(document.querySelectorAll('main h1')).map(h => h.textContent)")
    assert headings, f"{page}: no <h1> in the page's main content"

    # Math: Sphinx marks every equation with class "math"; each must have become an mjx-container.
    n_math = browser.execute_script("return document.querySelectorAll('main .math').length")
    mathjax = browser.execute_async_script(WAIT_FOR_MATHJAX)
    if n_math:
        assert mathjax == "ok", f"{page}: has {n_math} equations but MathJax did not run ({mathjax})"
        n_rendered = browser.execute_script("return document.querySelectorAll('main mjx-container').length")
        assert n_rendered >= n_math, f"{page}: {n_math} equations, only {n_rendered} rendered by MathJax"
        errors = browser.execute_script(
            "return Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error'))"
        )
        assert not errors, f"{page}: MathJax TeX errors {errors}"
    # Prose (code and outputs removed) must hold no TeX delimiter that MathJax failed to pick up.
    prose = browser.execute_script(PROSE_TEXT)
    # (LaTeX text commands too: a bibliography field such as \texttt{...} is printed as it stands.)
    raw = [d for d in ("$", "\\(", "\\)", "\\[", "\\]", "\\begin{", "\\frac", "\\texttt", "\\url",
                       "\\emph", "\\textit", "\\textbf") if d in prose]
    if raw:
        snippet = next(line for line in prose.splitlines() if any(d in line for d in raw))
        pytest.fail(f"{page}: raw TeX {raw} left in the rendered text, e.g. {snippet!r}")

    # No writer's placeholder (SWEEP_TEXT, TODO) may reach the reader in place of a paragraph.
    placeholders = re.findall(r"\b(?:[A-Z0-9]+_)+TEXT\b|\bTODO\b|\bFIXME\b|\bXXX\b", prose)
    assert not placeholders, f"{page}: placeholders in the prose: {placeholders}"

    # What a reader sees must hold no test marker: they live in cell tags, not in the text.
    visible = browser.execute_script("return document.body.innerText")
    markers = [line.strip() for line in visible.splitlines() if "NBVAL" in line]
    assert not markers, f"{page}: test markers visible to the reader: {markers[:5]}"
    # At 1440 px no code cell or printout may scroll sideways (lines <= 86 characters).
    browser.execute_async_script(SETTLE)
    wide = browser.execute_script(OVERFLOWING_CODE_CELLS)
    assert not wide, f"{page}: {len(wide)} code cells or outputs scroll sideways at {WINDOW[0]} px, e.g. {wide[:3]}"

    images = browser.execute_async_script(WAIT_FOR_IMAGES)
    broken = [img["src"] for img in images if not img["ok"]]
    assert not broken, f"{page}: images that did not load: {broken}"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    full_page_screenshot(browser, SCREENSHOTS / (page.replace("/", "__").removesuffix(".html") + ".png"))

    # Every request the page made (DevTools log) and every resource it fetched (Resource Timing).
    urls = requested_urls(browser)
    urls += browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls, f"{page}: no requests recorded at all; the network log is not working"
    outside = sorted({u for u in urls if not is_local(u, server)})
    assert not outside, f"{page}: requests outside localhost: {outside}"

    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, f"{page}: console errors: {severe}"

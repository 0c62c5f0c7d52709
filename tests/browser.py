"""Open a self-contained HTML report in a real headless browser (Debian's chromium, driven
by Playwright) and say what a reader would see.

`check_page(html, screenshot)` loads file://html, waits for the load event and for every
<img> to decode, saves a full-page screenshot, and returns

    {"title": str,
     "console_errors": [str],   # console.error()s, uncaught exceptions, failed requests,
                                #   and blocked requests: empty means a clean page
     "blocked_requests": [url], # requests to anything but file: and data: (never sent)
     "images": N, "images_loaded": M,  # <img>s, and those complete with naturalWidth > 0
     "broken_images": [src excerpt]}

A report must be self-contained (its plots data: URIs), so every request whose scheme is
not file: or data: is aborted before it leaves the browser, and recorded as an error.
Playwright never downloads a browser here: it launches /usr/bin/chromium (setup.sh installs
it), with --no-sandbox since the tests run as root.
"""
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"

# Wait for every image to finish (decode() rejects for a broken one), then judge each.
_IMAGES = """async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return imgs.map(i => ({src: i.getAttribute('src') || '', ok: i.complete && i.naturalWidth > 0}));
}"""


def check_page(html: Path, screenshot: Path, *, timeout_ms: float = 30_000,
               executable: str = CHROMIUM) -> dict:
    """Load `html` in headless chromium, save a full-page PNG to `screenshot`, return the
    errors and image counts described in the module docstring."""
    errors: list[str] = []
    blocked: list[str] = []

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:")):
            r.continue_()
        else:
            blocked.append(url)
            errors.append(f"blocked request (report not self-contained): {url}")
            r.abort("blockedbyclient")

    def console(m):
        if m.type == "error":
            errors.append(f"console.error: {m.text}")

    def failed(r):
        if r.url not in blocked:
            errors.append(f"request failed: {r.url[:100]} ({r.failure})")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_ms)
            page.on("console", console)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", failed)
            page.route("**/*", route)
            page.goto(Path(html).resolve().as_uri(), wait_until="load")
            imgs = page.evaluate(_IMAGES)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            title = page.title()
        finally:
            browser.close()
    return {"title": title, "console_errors": errors, "blocked_requests": blocked,
            "images": len(imgs), "images_loaded": sum(i["ok"] for i in imgs),
            "broken_images": [i["src"][:80] for i in imgs if not i["ok"]]}

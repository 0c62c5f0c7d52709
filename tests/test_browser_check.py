"""tests/browser.py's check_page on small pages: a clean one, a broken one, a leaky one."""
import base64
import http.server
import io
import threading

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tests.browser import check_page  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plot_uri() -> str:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def page(tmp_path, name, body, title="t"):
    f = tmp_path / name
    f.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                 f"</head><body>{body}</body></html>")
    return f


def test_good_page(tmp_path):
    html = page(tmp_path, "good.html", f"<h1>report</h1><img alt='plot' src='{plot_uri()}'>",
                title="good report")
    shot = tmp_path / "shots" / "good.png"
    r = check_page(html, shot)
    assert r["console_errors"] == [] and r["blocked_requests"] == []
    assert r["images"] == r["images_loaded"] == 1 and r["broken_images"] == []
    assert r["title"] == "good report"
    assert shot.read_bytes()[:8] == PNG_MAGIC


def test_broken_image_and_console_error(tmp_path):
    html = page(tmp_path, "bad.html", f"<img src='{plot_uri()}'>"
                "<img src='data:image/png;base64,AAAA'><script>console.error('x')</script>")
    r = check_page(html, tmp_path / "bad.png")
    assert r["images"] == 2 and r["images_loaded"] == 1
    assert r["broken_images"] == ["data:image/png;base64,AAAA"]
    assert "console.error: x" in r["console_errors"]
    assert (tmp_path / "bad.png").read_bytes()[:8] == PNG_MAGIC


def test_network_requests_are_blocked_not_sent(tmp_path):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local = f"http://127.0.0.1:{server.server_port}"
    try:
        html = page(tmp_path, "leaky.html", "<img src='http://198.18.0.1/x.png'>"
                    f"<img src='{local}/y.png'>"
                    f"<script>fetch('{local}/z.json').catch(() => null)</script>")
        r = check_page(html, tmp_path / "leaky.png")
    finally:
        server.shutdown()
        server.server_close()
    assert "http://198.18.0.1/x.png" in r["blocked_requests"]
    assert f"{local}/y.png" in r["blocked_requests"] and f"{local}/z.json" in r["blocked_requests"]
    assert any("198.18.0.1/x.png" in e and "blocked" in e for e in r["console_errors"])
    assert r["images"] == 2 and r["images_loaded"] == 0
    assert hits == []  # aborted inside the browser: nothing reached the server

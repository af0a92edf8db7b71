#!/usr/bin/env python3
"""Serves the built page (dist/) on 127.0.0.1 with the page's Content-Security-Policy as a response header.

The <meta> policy in index.html binds the page only; a worker gets the policy of its own script's response, so the
header is what keeps the model worker to this origin and the user's model URL too. The policy is read from the
built index.html, so there is one copy of it.

    python3 web/serve.py [--dir dist] [--port 8080]
"""
import argparse
import functools
import html
import http.server
import re
import sys
from pathlib import Path

TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".gguf": "application/octet-stream",
    ".ts": "text/plain; charset=utf-8",
}


def page_policy(index: Path) -> str:
    text = index.read_text(encoding="utf-8")
    m = re.search(r'<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]+)"', text)
    if not m:
        sys.exit(f"serve: no Content-Security-Policy <meta> in {index}")
    return html.unescape(m.group(1))


class Handler(http.server.SimpleHTTPRequestHandler):
    policy = ""
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self):
        # frame-ancestors only works as a header (browsers ignore it in a <meta> policy): no site may frame the
        # page (clickjacking its buttons); X-Frame-Options says the same to older browsers.
        self.send_header("Content-Security-Policy", self.policy + "; frame-ancestors 'none'")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        # Revalidate the page's own files (a rebuild must show up), the model is cached by the page itself.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def list_directory(self, path):
        # No directory listings: the page's files are known by name, and nothing else should be browsable.
        self.send_error(404, "Not found")
        return None

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="dist")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--quiet", action="store_true", help="do not log each request")
    a = ap.parse_args()
    root = Path(a.dir).resolve()
    if not (root / "index.html").is_file():
        sys.exit(f"serve: {root}/index.html is missing: build the page first (trunk build --release)")
    Handler.policy = page_policy(root / "index.html")
    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), handler)
    server.verbose = not a.quiet
    print(f"Personascope: http://127.0.0.1:{server.server_address[1]}/  (serving {root}; Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

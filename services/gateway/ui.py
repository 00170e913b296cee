"""The web console's static files on the gateway's HTTP port (services/README.md, "Web console").

GET|HEAD /ui, /ui/         the page (console/index.html)
GET|HEAD /ui/<asset>       a file of console/ (console.js, console.css, vendor/3Dmol-2.5.5.min.js, ...)

The files hold no data, so they need no token: the page asks for the token and sends it with every data
call (`/v1/...`). Only the files listed at import are served: a request names one of them exactly, so
no path (`..`, encoded or not, absolute, a folder) can reach anything else. Every answer carries a strict
Content-Security-Policy: scripts, styles and connections from this origin only, images also from
`data:` and `blob:` (the page shows RDKit's SVG depictions as images, so their inline styles never run
in the page), no frames, no plugins. 3Dmol.js runs under it without 'unsafe-eval' (its one `eval` reads
string callbacks, which the page never passes) and without inline styles (tests/services/
test_console_ui.py checks that the browser reports no violation). Caching: the vendored 3Dmol.js has
its version in its name and is cached for a year; the page's own files are revalidated on each load
(ETag, 304). The files are package data of molm3d_services (services/pyproject.toml).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from .deployment import GatewayStage

CONSOLE_DIR = Path(__file__).with_name("console")
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"  # files whose name carries their version (vendor/)
REVALIDATE = "no-cache"  # stored, but checked (ETag) before each use: a new release shows at once
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def load_assets(folder: Path = CONSOLE_DIR) -> dict[str, Asset]:
    """Every file under `folder` by its path relative to it ("index.html", "vendor/3Dmol-2.5.5.min.js")."""
    assets = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        name = path.relative_to(folder).as_posix()
        body = path.read_bytes()
        content_type = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") and "charset" not in content_type:
            content_type += "; charset=utf-8"
        cache = IMMUTABLE if name.startswith("vendor/") else REVALIDATE
        assets[name] = Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"', cache)
    return assets


ASSETS = load_assets()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"status": {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}[status], "code": code, "message": message}},
        status_code=status,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


async def handle_ui(gateway: GatewayStage, request: Request, path: str) -> Response:
    """The console's files; `path` is the request path without its trailing slash (/ui, /ui/console.js)."""
    name = "index.html" if path == "/ui" else path.removeprefix("/ui/")
    asset = ASSETS.get(name) if path == "/ui" or path.startswith("/ui/") else None
    if asset is None:
        return _error(404, "not_found", "no such file of the console")
    if request.method not in ("GET", "HEAD"):
        return _error(405, "method_not_allowed", "use GET", {"allow": "GET, HEAD"})
    headers = {**SECURITY_HEADERS, "cache-control": asset.cache_control, "etag": asset.etag}
    if asset.etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    headers["content-length"] = str(len(asset.body))
    return Response(body, media_type=asset.content_type, headers=headers)

"""The web console's static files (services/gateway/ui.py): what is served, with which headers, and
that nothing outside the console folder can be named. Calls `handle_ui` with real Starlette requests;
no stack (the browser tests in test_console_ui.py load the same files through `molm3d serve`)."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import re
import tomllib
import urllib.parse
from pathlib import Path

import pytest
from starlette.requests import Request

from molm3d_services.gateway import ui

# The vendored 3Dmol.js: npm package 3dmol@2.5.5, file build/3Dmol-min.js (see its LICENSE beside it).
THREEDMOL = ("vendor/3Dmol-2.5.5.min.js", "f7cc78921ae72e7623e89cdd111434f58c2efddd2ffda1cd212644b406fb8016")


def get(raw_path: str, method: str = "GET", headers: dict[str, str] | None = None):
    """handle_ui's answer for a request line `method raw_path`, routed as http.py does (the path without
    its trailing slash); `path` percent-decoded, as ASGI servers give it."""
    scope = {
        "type": "http",
        "method": method,
        "path": urllib.parse.unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    request = Request(scope)
    return asyncio.run(ui.handle_ui(None, request, request.url.path.rstrip("/")))


@pytest.mark.parametrize(
    ("path", "name", "content_type"),
    [
        ("/ui", "index.html", "text/html; charset=utf-8"),
        ("/ui/", "index.html", "text/html; charset=utf-8"),
        ("/ui/console.js", "console.js", "text/javascript; charset=utf-8"),
        ("/ui/console.css", "console.css", "text/css; charset=utf-8"),
        ("/ui/vendor/3Dmol-2.5.5.min.js", "vendor/3Dmol-2.5.5.min.js", "text/javascript; charset=utf-8"),
    ],
)
def test_the_console_files_are_served_with_their_types(path, name, content_type):
    response = get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.body == (ui.CONSOLE_DIR / name).read_bytes()
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == ui.CSP


def test_the_policy_allows_this_origin_only():
    policy = dict(part.split(" ", 1) for part in ui.CSP.split("; "))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == "'self'"  # no eval, no inline
    assert policy["img-src"] == "'self' data: blob:"  # the depictions: SVG text from our API, as images
    assert policy["frame-ancestors"] == policy["object-src"] == policy["base-uri"] == "'none'"


def test_every_page_and_error_carries_the_policy():
    for path in ("/ui", "/ui/nothing.js", "/ui/../serve.yaml"):
        assert get(path).headers["content-security-policy"] == ui.CSP


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../http.py",
        "/ui/..%2fhttp.py",
        "/ui/%2e%2e/http.py",
        "/ui/%2e%2e%2fui.py",
        "/ui/vendor/../../ui.py",
        "/ui/vendor/..%2f..%2fui.py",
        "/ui//etc/passwd",
        "/ui/%2fetc%2fpasswd",
        "/ui/..%5c..%5cui.py",
        "/ui/vendor",
        "/ui/vendor/",
        "/ui/console",
        "/ui/./console.js/..",
        "/ui/CONSOLE.JS",
        "/ui/console.js%00.html",
        "/uifoo",
        "/ui-x/console.js",
    ],
)
def test_no_path_reaches_anything_but_the_console_files(path):
    response = get(path)
    assert response.status_code == 404
    assert b'"code":"not_found"' in response.body
    assert b"/" not in response.body.split(b'"message":')[1]  # no path in the answer


def test_a_trailing_slash_names_the_same_file():
    """As on every route of the gateway (http.py strips it): /ui/index.html/ is the page, nothing else."""
    assert get("/ui/index.html/").body == get("/ui").body == (ui.CONSOLE_DIR / "index.html").read_bytes()


def test_only_files_of_the_console_folder_are_known():
    names = set(ui.ASSETS)
    assert {"index.html", "console.js", "console.css", THREEDMOL[0], "vendor/3Dmol-2.5.5.LICENSE"} <= names
    assert all(not n.startswith(("/", ".")) and ".." not in n.split("/") for n in names)
    assert all((ui.CONSOLE_DIR / n).resolve().is_relative_to(ui.CONSOLE_DIR.resolve()) for n in names)


def test_every_console_file_is_installed_with_the_package():
    """services/pyproject.toml's package data covers each file (a wheel, as the image installs, holds
    only those; setuptools' `*` stops at a `/`)."""
    config = tomllib.loads((Path(ui.__file__).parents[1] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["molm3d_services.gateway"]

    def covered(name: str, pattern: str) -> bool:
        parts, globs = f"console/{name}".split("/"), pattern.split("/")
        return len(parts) == len(globs) and all(fnmatch.fnmatchcase(p, g) for p, g in zip(parts, globs, strict=True))

    assert [name for name in ui.ASSETS if not any(covered(name, p) for p in patterns)] == []


def test_other_methods_are_refused():
    response = get("/ui/console.js", "POST")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    assert get("/ui", "DELETE").status_code == 405


def test_head_gives_the_headers_without_the_body():
    response = get("/ui/console.css", "HEAD")
    assert response.status_code == 200 and response.body == b""
    assert response.headers["content-length"] == str(len((ui.CONSOLE_DIR / "console.css").read_bytes()))


def test_caching_the_versioned_vendor_file_for_long_and_the_page_with_revalidation():
    vendor = get("/ui/" + THREEDMOL[0])
    assert vendor.headers["cache-control"] == "public, max-age=31536000, immutable"
    page = get("/ui")
    assert page.headers["cache-control"] == "no-cache"
    etag = page.headers["etag"]
    again = get("/ui", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.body == b""
    assert get("/ui", headers={"if-none-match": '"other"'}).status_code == 200


def test_the_vendored_3dmol_is_the_pinned_release_with_its_license():
    body = (ui.CONSOLE_DIR / THREEDMOL[0]).read_bytes()
    assert hashlib.sha256(body).hexdigest() == THREEDMOL[1]
    license_text = (ui.CONSOLE_DIR / "vendor/3Dmol-2.5.5.LICENSE").read_text()
    assert "BSD-3-Clause" in license_text and "Three.js" in license_text


def test_the_page_loads_nothing_from_elsewhere():
    """Every src/href of the page is ours (/ui/...), a fragment or data:; the page's own script and style
    name no other origin and no external font."""
    html = (ui.CONSOLE_DIR / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert url.startswith(("/ui/", "#", "data:")), url
    for name in ("console.js", "console.css"):
        text = (ui.CONSOLE_DIR / name).read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), name
        assert "@import" not in text and "@font-face" not in text
    assert "<style" not in html and " style=" not in html and "<script>" not in html  # nothing inline (CSP)

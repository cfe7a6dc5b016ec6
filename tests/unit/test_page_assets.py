"""The pages' assets are package data: every file in ``deltafeed/api/static`` is matched by
pyproject's ``[tool.setuptools.package-data]`` (so wheels carry it), each vendored file is listed in
VENDORED.txt with its license beside it, and the pages name only assets that exist."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from deltafeed.api import page
from deltafeed.api.page import assets

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(page.__file__).parent / "static"


def test_every_asset_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["deltafeed.api"]
    files = sorted(p.relative_to(STATIC.parent).as_posix() for p in STATIC.iterdir() if p.is_file())
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)
    assert set(assets()) == {Path(f).name for f in files}  # and each is served


def test_vendored_files_are_listed_with_their_licenses() -> None:
    listed = (STATIC / "VENDORED.txt").read_text()
    targets = set(re.findall(r"-> (\S+)", listed))
    ours = set(re.search(r"Written for deltafeed: (.*)\.", listed).group(1).split(", "))  # type: ignore[union-attr]
    on_disk = {p.name for p in STATIC.iterdir()} - {"VENDORED.txt"}
    assert targets | ours == on_disk and not targets & ours
    assert "v5.0.9" in (STATIC / "lightweight-charts.standalone.production.js").read_text()[:300]
    for lic in ("LICENSE-lightweight-charts.txt", "LICENSE-swagger-ui.txt"):
        assert "Apache License" in (STATIC / lic).read_text()


def test_pages_name_only_assets_that_exist() -> None:
    for name in ("chart.html", "docs.html"):
        refs = re.findall(r'(?:src|href)="/static/([^"]+)"', (STATIC / name).read_text())
        assert refs and all((STATIC / r).is_file() for r in refs), (name, refs)

"""Open a self-contained HTML page (a `medimg report`, the demo's index) in headless Chromium, as a reader would.

    decoded = images_decoded(page, tmp_path)     # (images on the page, images that decoded)
    png = screenshot(page, tmp_path)             # a PNG of the rendered page

Debian's `chromium` is used when it is on PATH (`.ci/run` installs it; `CHROMIUM` is None otherwise). The flags
keep it from reaching the network: this machine's closed network refuses its background connections.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _chromium(args: list[str], tmp: Path, timeout: float) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result


def images_decoded(page: Path, tmp: Path, timeout: float = 120) -> tuple[int, int]:
    """(number of <img> elements, number that decoded with a non-zero width) once `page` has loaded.

    A copy of the page with a checking script is opened (the page's own Content-Security-Policy forbids scripts).
    """
    text = Path(page).read_text(encoding="utf-8")
    probe = text.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';").replace(
        "</body>", "<script>addEventListener('load',()=>{const i=[...document.images];document.body.setAttribute("
        "'data-check',i.length+':'+i.filter(x=>x.complete&&x.naturalWidth>0).length)})</script></body>")
    probe_path = Path(page).with_name(f".probe-{Path(page).name}")
    probe_path.write_text(probe, encoding="utf-8")
    try:
        result = _chromium(["--virtual-time-budget=5000", "--dump-dom", probe_path.as_uri()], tmp, timeout)
    finally:
        probe_path.unlink(missing_ok=True)
    check = re.search(r'data-check="(\d+):(\d+)"', result.stdout)
    if check is None:
        raise RuntimeError(f"{page}: the checking script did not run; page starts {result.stdout[:500]!r}")
    return int(check.group(1)), int(check.group(2))


def screenshot(page: Path, tmp: Path, size: tuple[int, int] = (1200, 2400), timeout: float = 120) -> Path:
    """A PNG screenshot (width, height = `size`) of `page` rendered headless; returns its path in `tmp`."""
    out = Path(tmp) / f"{Path(page).stem}-screenshot.png"
    _chromium([f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=5000", f"--screenshot={out}",
               Path(page).resolve().as_uri()], tmp, timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {page}")
    return out

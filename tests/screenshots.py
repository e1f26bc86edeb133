"""Screenshots of the built book in headless Chromium, at desktop and phone widths.

    jupyter-book build .
    python tests/screenshots.py _build/html OUT [intro 11_grad_cam ...]

Needs Chromium (Debian: ``apt-get install chromium``). Writes ``OUT/<page>-desktop.png`` and
``OUT/<page>-phone.png`` for the intro and the given chapters (default: the intro and three
chapters), each the top of the page at 1280 px and at 390 px width. Look at them: cut figures,
unreadable labels, blank or saturated heatmaps are bugs. Not part of the test run (it needs a
browser and a built book).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

WIDTHS = {"desktop": (1280, 2400), "phone": (390, 2400)}
DEFAULT = ["intro", "03_saliency_maps", "11_grad_cam", "24_can_we_trust_the_maps"]


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: apt-get install chromium")


def shoot(html: Path, out: Path, pages=DEFAULT) -> list:
    out.mkdir(parents=True, exist_ok=True)
    exe = browser()
    written = []
    for name in pages:
        page = html / "book" / f"{name}.html"
        if not page.exists():
            raise SystemExit(f"{page} does not exist: build the book first")
        for kind, (w, h) in WIDTHS.items():
            png = out / f"{name}-{kind}.png"
            subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--window-size={w},{h}", "--virtual-time-budget=8000",
                            f"--screenshot={png}", page.resolve().as_uri()],
                           check=True, capture_output=True, timeout=120)
            written.append(png)
            print(png)
    return written


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    shoot(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] or DEFAULT)

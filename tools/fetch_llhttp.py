"""Fetch llhttp's C sources for the compiled request path (setup.py builds them into `proxy/http`).

The proxy drives llhttp (the parser httptools wraps) from C: its callbacks become C calls instead of
Python calls into httptools' parser object. The sources are the ones vendored in the source distribution
of the httptools release installed in this venv, so both parsers are the same llhttp, with the same rules
and the same error reasons. Nothing is copied into the repository: they land in build/llhttp/.

Usage: python tools/fetch_llhttp.py [DEST]   (default build/llhttp; nothing to do when already there)
`make` runs it before building; without the sources (no network), the request path runs as plain Python.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

WANTED = ("include/llhttp.h", "src/llhttp.c", "src/api.c", "src/http.c")


def httptools_release() -> str:
    """The installed httptools, else the release pyproject.toml pins (before the venv has it)."""
    try:
        return version("httptools")
    except PackageNotFoundError:
        pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
        pinned = re.search(r'"httptools==([^"]+)"', pyproject)
        if pinned is None:
            raise SystemExit("fetch_llhttp: pyproject.toml pins no httptools release") from None
        return pinned.group(1)


def fetch(dest: Path) -> int:
    release = httptools_release()
    stamp = dest / "VERSION"
    if stamp.exists() and stamp.read_text().strip() == release and all((dest / f).exists() for f in WANTED):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                               ":all:", "-d", tmp, f"httptools=={release}"], check=False)
        archives = list(Path(tmp).glob("httptools-*.tar.gz"))
        if done.returncode or not archives:
            print(f"fetch_llhttp: could not download the httptools {release} source distribution",
                  file=sys.stderr)
            return 1
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                # httptools-X.Y.Z/vendor/llhttp/<wanted>
                parts = member.name.split("/", 3)
                if len(parts) == 4 and parts[1:3] == ["vendor", "llhttp"] and parts[3] in WANTED:
                    target = dest / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
    missing = [f for f in WANTED if not (dest / f).exists()]
    if missing:
        print(f"fetch_llhttp: httptools {release} has no {', '.join(missing)}", file=sys.stderr)
        return 1
    stamp.write_text(release + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(fetch(Path(sys.argv[1] if len(sys.argv) > 1 else "build/llhttp")))

"""Build hook for the optional compiled code (everything else lives in pyproject.toml).

- C extensions: `steelyard.strategies._maglev_fill` fills large Maglev tables ~15x faster than NumPy;
  `_picks` runs the common PowerOfTwoChoices and PeakEWMA pick ~2.5x cheaper.
- The request path, HTTP and TCP (`proxy/tcp.py`: the per-chunk copy between a tunnel's two transports),
  compiled by Cython from its plain Python source (Cython's pure Python mode): the modules with a `.pxd`
  beside them (`HOT_PATH`), whose declarations make their classes extension types.

All of it is optional (`optional=True`): without a compiler, or without Cython, the install still succeeds
and the same modules run as pure Python (the reference the compiled code is tested against).
STEELYARD_PURE_PYTHON=1 leaves the request path uncompiled.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The request path (see docs/benchmarks.md, "Where the time goes"): each has a .pxd with its declarations.
HOT_PATH = ["steelyard.proxy.http", "steelyard.proxy.pool", "steelyard.proxy.server",
            "steelyard.proxy.sockets", "steelyard.proxy.tcp", "steelyard.runtime.upstream"]
# llhttp's C sources, from the pinned httptools release's source distribution (tools/fetch_llhttp.py, run by
# `make`): compiled into proxy/http, which calls llhttp from C instead of through httptools' Python objects.
# tools/fetch_llhttp.py writes VERSION once every file it wants is there.
LLHTTP = "build/llhttp"
DIRECTIVES = {
    "language_level": 3,
    # Types come from the .pxd files only: Cython 3 would otherwise take `x: float` annotations as C doubles
    # and `x: SomeClass` as refusing None, which the plain Python source never meant.
    "annotation_typing": False,
    "auto_pickle": False,  # nobody pickles a connection
}


def _hot_path() -> list[Extension]:
    if os.environ.get("STEELYARD_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("steelyard: Cython is not installed: the request path runs as plain Python", file=sys.stderr)
        return []
    if not os.path.exists(os.path.join(LLHTTP, "VERSION")):
        print(f"steelyard: llhttp's sources are not in {LLHTTP} (tools/fetch_llhttp.py): the request path "
              "runs as plain Python", file=sys.stderr)
        return []
    extensions = [Extension(name, [os.path.join("src", *name.split(".")) + ".py"], optional=True)
                  for name in HOT_PATH]
    for extension in extensions:
        if extension.name == "steelyard.proxy.http":  # drives llhttp itself (see http.pxd)
            extension.sources += sorted(glob.glob(os.path.join(LLHTTP, "src", "*.c")))
            extension.include_dirs.append(os.path.join(LLHTTP, "include"))
            extension.extra_compile_args.append("-fvisibility=hidden")  # (httptools has its own llhttp)
    try:  # (the generated C goes to build/, not next to the sources)
        compiled = cythonize(extensions, compiler_directives=DIRECTIVES, build_dir="build/cython", quiet=True)
    except Exception as exc:  # a Cython error must not stop the install: plain Python works
        print(f"steelyard: Cython failed ({exc}): the request path runs as plain Python", file=sys.stderr)
        return []
    for extension in compiled:
        extension.optional = True  # (cythonize's copies do not keep it)
    return list(compiled)


class BuildExt(build_ext):
    """The request path's modules import one another's types: all of them compiled, or none."""

    def build_extensions(self) -> None:
        super().build_extensions()  # (an optional extension that fails is a warning)
        built = [self.get_ext_fullpath(ext.name) for ext in self.extensions if ext.name in HOT_PATH]
        if built and not all(os.path.exists(path) for path in built):
            print("steelyard: part of the request path failed to compile: it runs as plain Python",
                  file=sys.stderr)
            for path in built:
                if os.path.exists(path):
                    os.remove(path)


setup(
    ext_modules=[
        Extension(f"steelyard.strategies.{name}", [f"src/steelyard/strategies/{name}.c"],
                  extra_compile_args=["-O2"], optional=True)
        for name in ("_maglev_fill", "_picks")
    ] + _hot_path(),
    cmdclass={"build_ext": BuildExt},
)

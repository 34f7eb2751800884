"""Build hook for the optional C extensions (everything else lives in pyproject.toml).

`steelyard.strategies._maglev_fill` fills large Maglev tables ~15x faster than NumPy; `_picks` runs the
common PowerOfTwoChoices and PeakEWMA pick ~2.5x cheaper. `optional=True`: without a compiler the
install still succeeds and the strategies run their pure-Python code (the reference the C is tested on).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(f"steelyard.strategies.{name}", [f"src/steelyard/strategies/{name}.c"],
                  extra_compile_args=["-O2"], optional=True)
        for name in ("_maglev_fill", "_picks")
    ]
)

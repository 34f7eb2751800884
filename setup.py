"""Build hook for the one optional C extension (everything else lives in pyproject.toml).

`steelyard.strategies._maglev_fill` fills large Maglev tables ~15x faster than NumPy. `optional=True`:
without a compiler the install still succeeds and `maglev.build_table` uses NumPy or pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "steelyard.strategies._maglev_fill",
            ["src/steelyard/strategies/_maglev_fill.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)

"""Build the Cython kernels of passtcore.

Every ``passtcore/_*.pyx`` becomes an extension module; adding a kernel needs no
edit here. ``PASSTCORE_NO_EXT=1`` skips them (the pure-Python twins in
``passtcore_py`` then serve).
"""
import glob
import os

from setuptools import setup

ext_modules = []
if os.environ.get("PASSTCORE_NO_EXT") != "1":
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [
            Extension(
                path[:-4].replace(os.sep, "."),
                [path],
                include_dirs=[numpy.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            )
            for path in sorted(glob.glob(os.path.join("passtcore", "_*.pyx")))
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )

setup(ext_modules=ext_modules)

"""Package discovery for the flat layout (the rest of the metadata is in pyproject.toml).

Each top-level directory with an ``__init__.py`` (except ``tests``) is a subpackage of
``tether``: ``protocol/`` ships as ``tether.protocol``. Every package below one ships too,
now and in future, and so does every ``py.typed``. setuptools' ``packages.find`` cannot add
the ``tether.`` prefix to what it finds, so the list is made here from ``find_packages``.

The dashboard's static files (``controller/web/static/``, no build step) ship as package
data of data-only packages: each directory below ``static/`` is listed as a (namespace)
package with all its files as data, which is the layout setuptools asks for. Left as data
of ``tether.controller.web`` they ship too, but setuptools warns that a directory Python
could import (``static``, ``static.css``...) is missing from ``packages``.
``tests/packaging/test_wheel.py`` builds the wheel and checks it holds every package and
every static file.
"""

from setuptools import find_namespace_packages, find_packages, setup

ROOTS = sorted(name for name in find_packages(".", exclude=["tests", "tests.*"])
               if "." not in name)
PACKAGES = [f"tether.{name}" for name in find_packages(".", include=[
    pattern for root in ROOTS for pattern in (root, f"{root}.*")])]
STATIC = "tether.controller.web.static"
STATIC_PACKAGES = [STATIC, *(f"{STATIC}.{name}" for name in
                             find_namespace_packages("controller/web/static"))]

setup(packages=PACKAGES + STATIC_PACKAGES,
      package_dir={f"tether.{root}": root for root in ROOTS},
      package_data={package: ["py.typed"] for package in PACKAGES}
      | {package: ["*"] for package in STATIC_PACKAGES})

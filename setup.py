"""Package discovery for the flat layout (the rest of the metadata is in pyproject.toml).

Each top-level directory with an ``__init__.py`` (except ``tests``) is a subpackage of
``tether``: ``protocol/`` ships as ``tether.protocol``. Every package below one ships too,
now and in future, and so does every ``py.typed``. setuptools' ``packages.find`` cannot add
the ``tether.`` prefix to what it finds, so the list is made here from ``find_packages``;
the dashboard's static files (``controller/web/static/``, no build step) ship as package
data;
``tests/test_packaging.py`` builds the wheel and checks it holds every package.
"""

from setuptools import find_packages, setup

ROOTS = sorted(name for name in find_packages(".", exclude=["tests", "tests.*"])
               if "." not in name)
PACKAGES = [f"tether.{name}" for name in find_packages(".", include=[
    pattern for root in ROOTS for pattern in (root, f"{root}.*")])]

setup(packages=PACKAGES, package_dir={f"tether.{root}": root for root in ROOTS},
      package_data={package: ["py.typed"] for package in PACKAGES}
      | {"tether.controller.web": ["py.typed", "static/*", "static/**/*"]})

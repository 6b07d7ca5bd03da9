"""pile-companion's one installed name (issue 18 item 5).

The distribution installs this package only; `protocol`, `firmware`,
`host`, `sim` and `tools` live inside it (setup.cfg `package_dir`). Our code
imports them by their short names (`from protocol import codec`): the
board freezes `protocol` and `firmware` as top-level packages
(firmware/board/manifest.py) and the MicroPython suites import them so.

Importing this package puts one finder first on `sys.meta_path` that maps
exactly those five names (and their submodules) to the folder holding them:
inside this package when installed from a wheel, beside it in a checkout.
Nothing else is put on sys.path and no other name is claimed.

One module object per file: the short name is the module's real name.
`pile_companion.host.bridge` is an alias, the very object `host.bridge`
(sys.modules holds both keys for it), so a file is never run twice under
two names and the console scripts (`pile_companion.tools.frames:main`) reach
the same module the code imports.
"""
import importlib
import os
import sys
from importlib.machinery import ModuleSpec, PathFinder

NAMES = ("protocol", "firmware", "host", "sim", "tools")

_HERE = os.path.dirname(os.path.abspath(__file__))
# Installed: the packages are in this folder. A checkout (the editable
# install, or a copy of the tree): in the folder above, beside this one.
ROOT = _HERE if os.path.isfile(os.path.join(_HERE, "protocol", "__init__.py")) \
    else os.path.dirname(_HERE)


class _Alias:
    """Loader of `pile_companion.X...`: the module is `X...` itself."""

    def __init__(self, short):
        self.short = short

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # The import system returns what sys.modules holds under the name
        # once this returns: the short-named module, loaded once.
        sys.modules[module.__spec__.name] = importlib.import_module(self.short)


class ShortNames:
    """Meta path finder for the five short names (from ROOT) and their
    `pile_companion.` aliases; every other name goes past it."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        head = fullname.split(".", 1)[0]
        if head in NAMES:
            if "." in fullname:
                return None     # a submodule: found on its package's __path__
            return PathFinder.find_spec(fullname, [ROOT])
        if head == __name__ and "." in fullname:
            short = fullname[len(__name__) + 1:]
            if short.split(".", 1)[0] in NAMES:
                return ModuleSpec(fullname, _Alias(short))
        return None


def _install():
    # First: our code's `tools` or `host` must never be another
    # distribution's, nor a folder of that name in the working directory.
    if not any(f is ShortNames for f in sys.meta_path):
        sys.meta_path.insert(0, ShortNames)


_install()

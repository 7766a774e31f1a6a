"""CLI sub-commands; each module registers on ``polyprune.cli.app``."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

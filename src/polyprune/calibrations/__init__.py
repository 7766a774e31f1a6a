"""Language-aware calibration recipes; every module here registers into ``polyprune.calibration.RECIPES``."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

"""Erasure methods. Each is one module with its config, its loss and its `erase_*` function."""
from .cg import CGConfig, erase_cg
from .dt import DTConfig, erase_dt
from .esd import ESDConfig, erase_esd

# name -> (config class, erase function)
METHODS = {
    "dt": (DTConfig, erase_dt),
    "cg": (CGConfig, erase_cg),
    "esd": (ESDConfig, erase_esd),
}

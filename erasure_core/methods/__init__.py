"""Erasure methods. Each is one module with its config, its loss (or edit) and its `erase_*` function."""
from .ca import CAConfig, erase_ca
from .cg import CGConfig, erase_cg
from .dt import DTConfig, erase_dt
from .esd import ESDConfig, erase_esd
from .uce import UCEConfig, erase_uce

# name -> (config class, erase function)
METHODS = {
    "dt": (DTConfig, erase_dt),
    "cg": (CGConfig, erase_cg),
    "esd": (ESDConfig, erase_esd),
    "ca": (CAConfig, erase_ca),
    "uce": (UCEConfig, erase_uce),
}

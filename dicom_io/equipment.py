"""How cephnode names itself in the General Equipment module of every object it writes."""
from __future__ import annotations

MANUFACTURER = "cephnode"
DEVICE_SERIAL_NUMBER = "0"   # software, not a device: the type 1 attribute still needs a value


def model_name(pack_name: str) -> str:
    """Manufacturer's Model Name: the algorithm and the model pack that produced the object (LO, 64)."""
    return f"CephTrace v4 ({pack_name})"[:64]


def software_versions(pack_version: str) -> str:
    return pack_version[:64]

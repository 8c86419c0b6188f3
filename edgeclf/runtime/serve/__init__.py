"""The device's live page and HTTP API (``edgeclf run --serve``): needs ``pip install edgeclf[serve]``."""
from edgeclf.runtime.serve.app import DeviceServer

__all__ = ["DeviceServer"]

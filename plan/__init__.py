"""The layout planner (``triforge-plan``): memory, communication, bubble and step time of
candidate layouts, from formulas that ``make bench`` checks against measurements."""

from .hardware import DEVICES, Device, device_named
from .layout import Layout, Workload
from .search import Prediction, plan, predict

__all__ = ["DEVICES", "Device", "Layout", "Prediction", "Workload", "device_named", "plan",
           "predict"]

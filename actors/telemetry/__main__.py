from ..base import run
from .actor import Telemetry

run(Telemetry)

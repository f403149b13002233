"""anger-stream: real-time anger detection in speech."""

from .calls import Calls
from .detector import AngerDetector, DetectorConfig
from .events import AngerEnd, AngerStart, Event, Status, Window
from .model import AngerModel, ModelError
from .streams import StreamSet

__all__ = [
    "AngerDetector",
    "AngerEnd",
    "AngerModel",
    "AngerStart",
    "Calls",
    "DetectorConfig",
    "Event",
    "ModelError",
    "Status",
    "StreamSet",
    "Window",
]
__version__ = "0.1.0"

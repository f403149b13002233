"""anger-stream: real-time anger detection in speech.

The Python API: `AngerDetector` scores audio (`feed` chunks of a stream, or `score` / `analyse` a whole
recording) and gives `Window`, `AngerStart` and `AngerEnd` events; `StreamSet` and `Calls` score many streams
(calls) in one batched model call. The README's "Python API" section has runnable examples; the command line
is `anger-stream` (or `python -m anger_stream`).
"""

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

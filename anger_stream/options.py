"""The options shared by the commands that run the detector: one definition of each (name, help, default),
the `--config` settings file, and their translation into a DetectorConfig and a model.

A command takes the ones that apply to it as parameters annotated with these types, passes the detector's to
`detector_settings`, and adds its own options beside them in its own module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .detector import DetectorConfig
from .files import check_input
from .model import PACKAGED_MODELS, is_packaged
from .sources import InputError
from .stdio import EXIT_USAGE, fail

DEFAULTS = DetectorConfig()


def _readable(params: list[Any]) -> None:
    """Help that reads like the README: an argument shows its metavar alone (PATH...), not a Python type, and
    a bounded number says its bounds in words."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            shown = f"{param.metavar or param.name.upper()}{'...' if param.nargs != 1 else ''}"
            param._rich_display_name = lambda shown=shown: shown  # type: ignore[method-assign]
        elif isinstance(param, TyperOption) and (param.min is not None or param.max is not None):
            low, high = param.min, param.max
            bounds = f"{low} or more" if high is None else f"{low} to {high}" if low is not None else f"up to {high}"
            param._get_number_range_help_str = lambda bounds=bounds: bounds  # type: ignore[method-assign]


class Command(TyperCommand):
    """A command whose help shows PATH... and N, not `{paths}...`, `<list[str]>` or `<int range>`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _readable(self.params)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [piece.replace("{", "").replace("}", "") for piece in super().collect_usage_pieces(ctx)]


class Group(TyperGroup):
    """The top-level command, with the same readable help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _readable(self.params)


Threshold = Annotated[
    float | None,
    typer.Option(metavar="P", help=f"p(anger) at or above this is angry. [default: {DEFAULTS.threshold}]"),
]
Model = Annotated[
    str | None,
    typer.Option(
        metavar="PATH|NAME",
        help=f"ONNX model: a path, or a packaged model's name: {', '.join(PACKAGED_MODELS)}. full: the FCN and "
        "YAMNet (p and a raised-voice score); fast: the FCN alone (several times cheaper, for very many calls); "
        "-int8: quantised (faster). [default: full]",
    ),
]
MinDbfs = Annotated[
    float | None,
    typer.Option(
        "--min-dbfs",
        metavar="DBFS",
        help=f"Silence gate: quieter windows are not scored. [default: {DEFAULTS.min_dbfs:g}]",
    ),
]
Patience = Annotated[
    int | None,
    typer.Option(metavar="N", help=f"Angry windows in a row to start an anger segment. [default: {DEFAULTS.patience}]"),
]
Hysteresis = Annotated[
    float | None,
    typer.Option(
        metavar="H", help=f"A segment ends when p falls below threshold minus H. [default: {DEFAULTS.hysteresis}]"
    ),
]
Hold = Annotated[
    float | None,
    typer.Option(
        "--hold",
        metavar="SECONDS",
        help="A segment ends only after this long without an angry window (pauses and calmer phrases inside "
        f"an outburst do not split it). [default: {DEFAULTS.hold_s:g}]",
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="JSON settings (threshold, patience, hysteresis, hold, min_dbfs, model; each optional), e.g. from "
        "`anger-stream calibrate`. Options given on the command line win.",
    ),
]
Window = Annotated[
    float | None, typer.Option(metavar="S", help=f"Window length in seconds. [default: {DEFAULTS.window_s}]")
]
Hop = Annotated[
    float | None, typer.Option(metavar="S", help=f"Hop between windows in seconds. [default: {DEFAULTS.hop_s}]")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors and warnings.")]
EventsOnly = Annotated[bool, typer.Option("--events-only", help="Leave out the window lines.")]

FILE_KEYS = {
    "threshold": "threshold",
    "patience": "patience",
    "hysteresis": "hysteresis",
    "hold": "hold_s",
    "min_dbfs": "min_dbfs",
}
"""Keys of a settings file that are DetectorConfig fields (besides "model")."""
OPTION_NAMES = {
    "threshold": "--threshold",
    "window_s": "--window",
    "hop_s": "--hop",
    "min_dbfs": "--min-dbfs",
    "patience": "--patience",
    "hysteresis": "--hysteresis",
    "hold_s": "--hold",
}
"""DetectorConfig fields -> the options that set them."""


@dataclass(frozen=True)
class DetectorSettings:
    """What the shared options decide: the detector's parameters and the model (a path or a packaged name)."""

    config: DetectorConfig
    model: str | None


def read_settings_file(path: Path) -> dict[str, Any]:
    """The settings in a --config file, checked for unknown keys; a relative model path is relative to it."""
    try:
        check_input(path)
        data = json.loads(path.read_text(encoding="utf-8"))
    except InputError as exc:
        fail(f"--config: {exc}", EXIT_USAGE)
    except OSError as exc:
        fail(f"--config {path}: {exc.strerror or exc}", EXIT_USAGE)
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"--config {path}: not a JSON settings file ({exc})", EXIT_USAGE)
    except RecursionError:  # Python's parser recurses once per level of nesting
        fail(f"--config {path}: not a JSON settings file (nested too deep)", EXIT_USAGE)
    if not isinstance(data, dict):
        fail(f"--config {path}: expected a JSON object of settings", EXIT_USAGE)
    unknown = sorted(set(data) - set(FILE_KEYS) - {"model"})
    if unknown:
        known = ", ".join([*FILE_KEYS, "model"])
        fail(f"--config {path}: unknown setting {', '.join(map(repr, unknown))} (known: {known})", EXIT_USAGE)
    model = data.get("model")
    if model is not None:
        if not isinstance(model, str) or not model:
            fail(f"--config {path}: model must be a path or one of {', '.join(PACKAGED_MODELS)}", EXIT_USAGE)
        if not is_packaged(model) and not Path(model).is_absolute():
            data["model"] = str(path.parent / model)
    return data


def detector_settings(
    config_file: Path | None,
    *,
    threshold: float | None = None,
    model: str | None = None,
    min_dbfs: float | None = None,
    patience: int | None = None,
    hysteresis: float | None = None,
    hold: float | None = None,
    window: float | None = None,
    hop: float | None = None,
) -> DetectorSettings:
    """The settings file overlaid with the options given (None: not given), checked by DetectorConfig.

    A value DetectorConfig refuses is a usage error naming the option or the file's key.
    """
    from_file = read_settings_file(config_file) if config_file is not None else {}
    given = {
        "threshold": threshold,
        "min_dbfs": min_dbfs,
        "patience": patience,
        "hysteresis": hysteresis,
        "hold_s": hold,
        "window_s": window,
        "hop_s": hop,
    }
    fields = {FILE_KEYS[k]: v for k, v in from_file.items() if k in FILE_KEYS}
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        config = replace(DEFAULTS, **fields)
    except ValueError as exc:
        name, _, reason = str(exc).partition(" ")
        if name in fields and given.get(name) is None and name in FILE_KEYS.values():
            where = f"--config {config_file}: {next(k for k, v in FILE_KEYS.items() if v == name)}"
        else:
            where = OPTION_NAMES.get(name, name)
        fail(f"{where} {reason}", EXIT_USAGE)
    return DetectorSettings(config, model if model is not None else from_file.get("model"))

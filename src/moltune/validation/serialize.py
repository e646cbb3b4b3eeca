"""Strict JSON for validation outputs: NaN / inf become the strings "nan" / "inf" / "-inf".

Python's json writes bare ``NaN``, which jq, JavaScript and most JSON parsers reject; a run that
blew up is exactly when these files are read by other tools.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from moltune.common.io import write_json


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by strings (recursing into dicts / lists)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_strict_json(path: str | os.PathLike, obj: Any):
    """Write ``json_safe(obj)`` atomically."""
    return write_json(path, json_safe(obj))

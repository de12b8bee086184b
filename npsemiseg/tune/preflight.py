"""Driver-side checks before the first trial, and the verdict on splits whose every trial failed.

``preflight(settings)`` does on the sweep driver what every trial would do first: build each split's trial
config (recipe values, and each searched range's extremes), open the data tree, draw the split, list the
validation images, read the image/mask headers, and find the ImageNet weights the recipe needs. The first
problem is one ``UserError`` line naming the split and the file or key, so the CLI exits 2 before Ray
schedules anything (instead of every trial raising on a worker).

``failed_split_lines(errors)`` turns "every trial of split X errored" into one line per split after the sweep;
the CLI prints them and exits 1.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from npsemiseg.errors import CommandFailed, UserError
from npsemiseg.tune.common import SPLIT_KEY

# "npsemiseg.errors.UserError: msg", "ConfigError: msg", "ray.exceptions.RayTaskError(UserError): msg", ...
_EXC_LINE = re.compile(r"^(?:[\w.]+\()?(?:[\w.]*\.)?(\w*(?:Error|Exception))\)?: (.+)$")
_USER_TYPES = ("UserError", "ConfigError", "DataError")


def split_config(settings: Any, split: str) -> Any:
    """The config every trial of ``split`` starts from (before the sampled values)."""
    from npsemiseg.config import apply_overrides

    return apply_overrides(settings.base_config(), {SPLIT_KEY: split})


def check_split(settings: Any, split: str) -> int:
    """Check one split as its trials would; returns the number of labelled images. Raises UserError."""
    from npsemiseg.data.build import build_datasets
    from npsemiseg.models.weights import needed_depths, require_weights

    try:
        cfg = split_config(settings, split)
        settings.space.check_against(cfg)
        for depth in needed_depths([cfg]):
            require_weights(depth)
        data = build_datasets(cfg)
    except UserError as e:
        from npsemiseg.errors import one_line

        raise type(e)(f"split {split}: {one_line(e)}") from None
    return len(data.labelled)


def preflight(settings: Any, log: bool = True) -> dict[str, int]:
    """Check every split of the sweep on the driver; {split: labelled images}. The first problem raises."""
    out = {}
    for split in settings.splits:
        out[split] = check_split(settings, split)
        if log:
            print(f"[preflight] {split}: ok ({out[split]} labelled images)", flush=True)
    return out


def error_reason(text: str) -> str:
    """The line of a trial's error that says why: a project error's message if one is in the chain, else the last
    ``SomeError: message`` line, else the first line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    found = [(m.group(1), m.group(2)) for ln in lines if (m := _EXC_LINE.match(ln))]
    for kind, msg in reversed(found):
        if kind in _USER_TYPES:
            return msg
    if found:
        kind, msg = found[-1]
        return f"{kind}: {msg}"
    return lines[0] if lines else "unknown error"


def failed_split_lines(errors: Mapping[str, Iterable[str | None]]) -> list[str]:
    """One line per split in which every trial errored: ``{split: [error text or None per trial]}``.

    A split with at least one trial that did not error, or with no trials, gives no line.
    """
    lines = []
    for split, errs in errors.items():
        errs = list(errs)
        if errs and all(errs):
            reasons = {error_reason(e) for e in errs}
            why = sorted(reasons)[0] + (f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else "")
            lines.append(f"split {split}: all {len(errs)} trial(s) failed: {why}")
    return lines


def errors_from_grid(grid: Any) -> dict[str, list[str | None]]:
    """{split: [str(result.error) or None]} from the sweep's Tune ``ResultGrid`` (the split is in each config)."""
    out: dict[str, list[str | None]] = {}
    for r in grid:
        split = str((r.config or {}).get(SPLIT_KEY, ""))
        out.setdefault(split, []).append(str(r.error) if r.error is not None else None)
    return out


class SplitsFailed(CommandFailed):
    """Every trial of one or more splits errored; ``lines`` says which and why (one line per split), exit 1."""

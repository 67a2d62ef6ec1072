"""The Core ML deployment target named in `export.coreml.minimum_deployment_target`, what it allows, and
where Core ML runs at all.

Kept apart from the converter so that the export settings can check the name without importing anything of
the export but coremltools."""

from __future__ import annotations

import sys

import coremltools as ct

NOT_MACOS_REASON = f"Core ML runs models only on macOS (MLModel.predict); this is {sys.platform}"


def deployment_target(name: str) -> ct.target:
    """The coremltools target for a config name such as 'iOS16' or 'macOS14'."""
    target = getattr(ct.target, name, None)
    if not isinstance(target, ct.target):
        raise ValueError(
            f"export.coreml.minimum_deployment_target: unknown target '{name}' (e.g. iOS16, iOS17)"
        )
    return target


def w8a8_skip_reason(target_name: str) -> str | None:
    """Why the W8A8 variant cannot be made here (None when it can)."""
    if deployment_target(target_name).value < ct.target.iOS17.value:
        return f"w8a8 needs minimum_deployment_target iOS17 or later, not {target_name}"
    return None

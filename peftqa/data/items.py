"""What a model reads of an item, whatever its source: the text fields `peftqa predict` takes and the served model's
columns, and the check each value must pass."""
from __future__ import annotations

TEXT_FIELDS = ("question", "context")  # what a model reads of an item: `peftqa predict`'s fields, the pyfunc's columns


def text_field_problem(field: str, value: object) -> str | None:
    """Why `value` cannot be an item's question or context, or None: each must be a non-empty string."""
    if isinstance(value, str) and value.strip():
        return None
    return f"field '{field}' must be a non-empty string, got {value!r:.60}"

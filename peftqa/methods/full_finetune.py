"""Method full_finetune: every weight trained, no adapter; the upper-bound reference, saved as the whole model."""
from __future__ import annotations

from peftqa.methods.registry import Method, register
from peftqa.methods.shared import build_no_adapter
from peftqa.params.knobs import FullFinetuneParams

register(Method("full_finetune", FullFinetuneParams, build_no_adapter, whole_model=True,
                note="full fine-tune: every weight trained (upper-bound reference, not an adapter)"))

"""Method base: no adapter. On the encoder a linear probe (logistic regression on the frozen encoder's features);
on a language model zero-shot, the base model as it is. It builds no adapter (methods.shared.build_no_adapter)."""
from __future__ import annotations

from peftqa.methods.registry import Method, register
from peftqa.methods.shared import build_no_adapter
from peftqa.params.knobs import BaseMethodParams

register(Method("base", BaseMethodParams, build_no_adapter, frozen=True,
                note="linear probe: logistic regression solved on the frozen encoder's features, C chosen on val",
                note_without_head="zero-shot: the base model as it is, nothing trained"))

"""``vllm_ext``: placeholder until the vLLM backend lands (issue 6)."""

from __future__ import annotations

from lm_eval.api.model import LM

from lm_eval_ext.errors import UserError, install_excepthook

install_excepthook()


class VllmExtLM(LM):
    def __init__(self, **model_args):
        raise UserError(
            "vllm_ext is not implemented yet in this version of lm-eval-ext; "
            "use --model vllm (stock) or --model hf_ext meanwhile"
        )

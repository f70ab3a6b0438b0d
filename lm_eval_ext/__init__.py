"""lm-eval-ext: an lm-evaluation-harness plugin (models ``hf_ext`` and ``vllm_ext``).

Importing this package is cheap on purpose: it runs at every interpreter start through the
``.pth`` hook, so nothing here may import torch, transformers, vLLM or lm-eval.
"""

__version__ = "0.1.0"

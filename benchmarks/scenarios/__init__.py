"""Every scenario of the instrument; importing this package registers them (``benchmarks.lib.scenarios``).

One module per theme: ``hf`` (shipped tasks, data parallel, GSM8K, compare-hf), ``real`` (lm-eval's
own real tasks), ``cache`` (cold vs warm), ``vllm``, ``ceiling`` (the decoder's forward ceiling),
``planner``, ``generation`` (lm-eval's GSM8K generation tasks), ``vllm_mc`` (vLLM multiple choice:
stock vs ext with the token bound, the profile), ``estimate`` (plan --tasks against the run). The run
order of a suite is its own list (:mod:`benchmarks.lib.suites`).
"""

from benchmarks.scenarios import (  # noqa: F401  (registers them)
    cache, ceiling, estimate, generation, hf, planner, real, vllm, vllm_mc,
)

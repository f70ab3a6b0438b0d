"""``hf_ext``: the transformers backend, in three layers.

- ``hf/`` (this folder): the glue to lm-eval. ``entry`` (what lm-eval builds: the real backend or the
  cache-only front), ``adapter`` (HfExtLM, the HFLM subclass), ``config`` (model_args),
  ``request_cache`` (deferred weights, model identity), ``progress``, ``dist``.
- ``hf/policy/`` (PURE): deciding: rows, prefix trees, packing, few-shot families, prompt-lookup
  drafts, the cost report. No torch, no lm-eval.
- ``hf/compute/`` (torch): computing: the engine, scoring and generation forwards, KV caches,
  attention, token budgets and probes, out-of-memory recovery. Never imports lm-eval.
"""

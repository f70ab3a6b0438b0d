"""``hf_ext``: the transformers backend.

``entry`` (what lm-eval builds: the real backend or the cache-only front), ``adapter`` (HfExtLM, the
HFLM subclass), ``config`` (model_args), ``engine`` (the scoring engine), ``batching`` (PURE: rows,
budgets, packing), ``scoring`` / ``generation`` / ``kv_cache`` / ``grouped_attention`` (torch),
``probe`` (token budgets), ``prompt_lookup`` (PURE), ``request_cache`` (deferred weights, identity),
``cost_report``, ``progress``, ``dist`` (the launcher's view of this process).
"""

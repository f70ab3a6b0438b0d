"""Deciding the layout: which strategy, on which devices, with which sizes, and why.

PURE modules (no torch, transformers, vLLM or ``os.environ``): ``facts`` (ModelFacts),
``hardware`` (Hardware), ``types`` (PlanRequest, Plan), ``param_formulas``, ``planner`` (hf and the
dispatch), ``vllm_policy`` (tensor/data/pipeline sizes), ``no_fit`` (the "nothing fits" error),
``preflight`` (launch checks). EDGE readers: ``model_facts`` (config.json, meta device),
``detect`` (GPUs, RAM, launcher variables), ``layout`` (a plan -> what ``hf_ext`` builds).
"""

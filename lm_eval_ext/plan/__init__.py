"""Deciding the layout: which strategy, on which devices, with which sizes, and why; and the
construction skeleton both backends compose.

PURE modules (no torch, transformers, vLLM or ``os.environ``): ``facts`` (ModelFacts),
``hardware`` (Hardware), ``launch`` (Launch: this process's ranks), ``types`` (PlanRequest, Plan),
``token_bytes`` (what a token in flight costs), ``param_formulas``, ``planner`` (hf and the dispatch),
``vllm_policy`` (tensor/data/pipeline sizes), ``no_fit`` (the "nothing fits" error), ``preflight``
(launch checks), ``hf_settings`` (hf_ext's device, dtype and request), ``build`` (hf_ext's build
description). EDGE readers: ``model_facts`` (the model's config), ``launch_env`` (the launcher's
variables), ``detect`` (GPUs, RAM), ``dry_run`` (a described machine; write and stop), ``threads``
(OMP_NUM_THREADS); ``prepare`` (the skeleton: machine -> facts -> plan + build -> dry-run exit) and
``layout`` (hf_ext's steps in it).
"""

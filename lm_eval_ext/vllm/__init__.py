"""``vllm_ext``: the vLLM backend.

``adapter`` (VllmExtLM), ``config`` (model_args), ``sizes`` (tensor/data parallel sizes for this run),
``plan_hook`` (the project planner behind ``sizes``), ``engines`` (in-process engine), ``replicas``
(persistent data-parallel replicas), ``server_client`` (a running vLLM server), ``scoring`` and
``generation`` (requests -> engine calls), ``request_cache`` (vLLM model identity).
"""

"""``vllm_ext``: the vLLM backend.

``adapter`` (VllmExtLM), ``config`` (model_args), ``build`` (the planner's sizes -> engine arguments
and pinning per replica), ``sizes`` (the sizes of this run), ``engines`` (in-process engine), ``replicas``
(persistent data-parallel replicas), ``server_client`` (a running vLLM server), ``scoring`` and
``generation`` (requests -> engine calls), ``request_cache`` (vLLM model identity).
"""

"""EDGE (torch): ``hf_ext``'s computing layer: the engine, the forward passes (scoring,
generation), KV caches, attention, token budgets and out-of-memory recovery. It imports torch and
transformers, never lm-eval: what lm-eval hands over is turned into plain requests one layer up
(``hf/``)."""

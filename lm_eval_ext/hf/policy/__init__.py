"""PURE: ``hf_ext``'s deciding layer: which requests share a row, how rows become batches, which
requests share a few-shot prefix, prompt-lookup drafts, the cost report. No torch, no lm-eval:
tests run it on plain tuples."""

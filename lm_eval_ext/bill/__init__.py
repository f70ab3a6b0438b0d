"""The bill before the run (``lm-eval-ext plan --tasks``): what a set of tasks costs on a planned layout.

``workload`` (lm-eval builds the requests, no model), ``count`` (the backend's own model without
weights tokenises, its policy counts), ``measure`` (``--measure``: real batches timed), ``estimate``
(the bill: counts, rates, seconds, memory, the time limit), ``render`` (PURE: the terminal table).
"""

"""What a run costs, priced and remembered; every backend composes it.

``time_model`` (PURE: counted tokens -> seconds from measured, remembered or paper rates),
``ledger`` (PURE: a run's estimate against what it measured, and the rates it leaves),
``history`` (the rates of finished runs, by model and hardware), ``run_record`` (a backend's ledger,
started from the history and remembered at the end). The bill before a run, which builds the
backends' models to count, is :mod:`lm_eval_ext.bill`.
"""

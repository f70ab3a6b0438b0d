"""The bill before the run: what a set of tasks costs on a planned layout, and afterwards what it did cost.

``workload`` (lm-eval builds the requests, no model), ``count`` (the backend's own tokenisation and
token counting policy, no weights), ``time_model`` (PURE: tokens -> seconds from measured, remembered
or paper rates), ``measure`` (times real batches), ``history`` (the rates of finished runs, by model
and hardware), ``ledger`` (PURE: a run's estimate against what it measured), ``bill`` (what
``lm-eval-ext plan --tasks`` prints).
"""

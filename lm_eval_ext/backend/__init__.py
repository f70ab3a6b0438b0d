"""What every backend composes: one call's state (``call``), the request front that answers lm-eval's
three request methods through the request cache (``front``), and lm-eval's requests as tokens, the
way stock makes them (``lm_requests``)."""

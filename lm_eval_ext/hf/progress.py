"""EDGE: a progress bar per request type showing requests/s and tokens/s (rank 0 only)."""

from __future__ import annotations

import os
import time

from tqdm import tqdm


def tqdm_disabled_by_env() -> bool:
    """``TQDM_DISABLE`` set to anything but empty/0/false (tqdm's own reading of the variable
    applies only where ``disable`` is not passed, and we pass it)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


#: a bar with no finished request yet is redrawn (to show tokens/s and the loop's status) at most
#: this often: a generation loop calls once per decode step
REDRAW_EVERY_S = 0.5


class CallProgress:
    """tqdm over requests, with computed tokens per second in the postfix."""

    def __init__(self, request_type: str, total_requests: int, *, disable: bool) -> None:
        self._bar = tqdm(total=total_requests, disable=disable or tqdm_disabled_by_env(), unit="req",
                         desc=f"hf_ext {request_type}")
        self._start_s = self._drawn_s = time.perf_counter()
        self._tokens = 0
        self._status = ""

    def update(self, num_requests: int, computed_tokens: int) -> None:
        self._tokens += computed_tokens
        self._show(refresh=num_requests == 0)
        if num_requests:
            self._bar.update(num_requests)

    def status(self, text: str) -> None:
        self._status = text
        self._show(refresh=False)

    def _show(self, *, refresh: bool) -> None:
        now_s = time.perf_counter()
        elapsed_s = max(1e-9, now_s - self._start_s)
        if refresh and now_s - self._drawn_s < REDRAW_EVERY_S:
            refresh = False
        if refresh:
            self._drawn_s = now_s
        rate = f"{self._tokens / elapsed_s:,.0f} tok/s"
        self._bar.set_postfix_str(f"{rate}, {self._status}" if self._status else rate, refresh=refresh)

    def close(self) -> None:
        self._bar.close()

"""A token bucket: how the servers bound a peer's messages (server.py) and the log lines about a peer (log.py)."""

from __future__ import annotations


class Allowance:
    """At most `burst` at once, `rate` a second after that."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.when = rate, burst, burst, now

    def take(self, now: float) -> bool:
        """One more at time `now` (seconds): True if allowed (a token is spent), False if over the bound."""
        self.tokens = min(self.burst, self.tokens + (now - self.when) * self.rate)
        self.when = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

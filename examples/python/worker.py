"""The seed's second pattern, a *worker with get_state / load_state*, on resurgam.

In Ray a controller calls ``get_state`` on its workers before each task, recreates the
workers when one fails and calls ``load_state`` with what it saved. resurgam does that
job: it calls ``get_state`` for every checkpoint (every ``checkpoint_every`` calls, every
``checkpoint_interval``, on ``resurgam checkpoint`` and at shutdown) and ``load_state``
when a new worker starts after a crash, then replays the calls made after the
checkpoint. The state is any picklable object; ``bytes`` pass through untouched.

Run it with ``resurgam run --config examples/python/worker.toml``.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import resurgam


class Worker:
    """A bank of accounts: deposits, withdrawals and balances."""

    def __init__(self) -> None:
        self.state: Dict[str, int] = {}
        self.currency = os.environ.get("BANK_CURRENCY", "EUR")

    def perform_task(self, args: Dict[str, Any]) -> int:
        """Applies ``{"account": name, "amount": n}`` (n < 0 withdraws); returns the balance."""
        account, amount = args["account"], int(args["amount"])
        balance = self.state.get(account, 0) + amount
        if balance < 0:
            # Raised before any change: the call fails with ActorError, the state is as before.
            raise ValueError(f"{account} has {self.state.get(account, 0)} {self.currency}")
        self.state[account] = balance
        return balance

    def balance(self, account: str) -> int:
        """The balance of ``account`` (0 if it has none)."""
        return self.state.get(account, 0)

    def get_state(self) -> Dict[str, int]:
        """Returns the actor's state (called by resurgam for each checkpoint)."""
        return self.state

    def load_state(self, state: Dict[str, int]) -> None:
        """Loads the actor's state (called by resurgam after a crash)."""
        self.state = state


if __name__ == "__main__":
    resurgam.serve(Worker)

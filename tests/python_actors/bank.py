"""A bank for the exec integration tests: accounts with integer balances.

``deposit`` and ``withdraw`` take ``{"account": str, "amount": int}`` and return the new
balance; ``balance`` takes the account's name. A withdrawal beyond the balance raises
:class:`InsufficientFunds` and changes nothing, so the client gets an ``ActorError``
with the message ``"InsufficientFunds: <text>"``. The state is the map of balances.
"""

from __future__ import annotations

from typing import Any, Dict

import resurgam


class InsufficientFunds(Exception):
    """A withdrawal asked for more than the account holds."""


class Bank:
    """Balances by account name; a missing account holds 0."""

    def __init__(self) -> None:
        self.balances: Dict[str, int] = {}

    def deposit(self, args: Dict[str, Any]) -> int:
        """Adds ``amount`` to ``account``; returns the new balance."""
        account, amount = args["account"], int(args["amount"])
        self.balances[account] = self.balances.get(account, 0) + amount
        return self.balances[account]

    def withdraw(self, args: Dict[str, Any]) -> int:
        """Takes ``amount`` from ``account``; returns the new balance.

        Raises :class:`InsufficientFunds` (state unchanged) when the balance is too low.
        """
        account, amount = args["account"], int(args["amount"])
        have = self.balances.get(account, 0)
        if amount > have:
            raise InsufficientFunds(f"{account} has {have}, cannot withdraw {amount}")
        self.balances[account] = have - amount
        return self.balances[account]

    def balance(self, account: str) -> int:
        """The balance of ``account``."""
        return self.balances.get(account, 0)

    def get_state(self) -> Dict[str, int]:
        """The balances (pickled by the SDK)."""
        return self.balances

    def load_state(self, state: Dict[str, int]) -> None:
        """Takes back balances returned by :meth:`get_state`."""
        self.balances = dict(state)


if __name__ == "__main__":
    resurgam.serve(Bank)

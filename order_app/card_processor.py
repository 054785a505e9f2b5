"""A simulated card processor: it charges the tokens that ``order_app.cards`` gives for
card numbers, and answers for the test cards listed there."""

from __future__ import annotations

from saga_app import BusinessError, TransientError


def authorize(token: str, amount_cents: int) -> None:
    """Raise the processor's answer for a charge that does not go through."""
    if token == "tok_chargeDeclined":
        raise BusinessError("card declined")
    if token == "tok_insufficientFunds":
        raise BusinessError("card declined: insufficient funds")
    if token == "tok_processingError":
        raise TransientError("card processor error, try again")

"""The order saga's card numbers: the checksum, and the token a number is exchanged for
when an order is accepted, so that no full number is ever stored, sent or logged. The
simulated card processor (``order_app/card_processor.py``) charges tokens; its test cards:

| card number        | token                    | on charge                               |
|--------------------|--------------------------|-----------------------------------------|
| 4242424242424242   | tok_visa                 | charged                                 |
| 5555555555554444   | tok_mastercard           | charged                                 |
| 4000000000000002   | tok_chargeDeclined       | declined (business failure)             |
| 4000000000009995   | tok_insufficientFunds    | declined: insufficient funds (business) |
| 4000000000000119   | tok_processingError      | processing error (transient, every try) |

Any other number that passes the Luhn check is charged, under a random token: drawn anew
for each order, it tells nothing of the number, in the store, in a command or in the
payment service's database (an unkeyed hash of the number would: the issuer's first six
digits and the last four leave few enough numbers to try them all).
"""

from __future__ import annotations

import secrets

TEST_CARDS = {
    "4242424242424242": "tok_visa",
    "5555555555554444": "tok_mastercard",
    "4000000000000002": "tok_chargeDeclined",
    "4000000000009995": "tok_insufficientFunds",
    "4000000000000119": "tok_processingError",
}


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def tokenize(number: str) -> dict[str, str]:
    """A token and the last four digits for a card number (digits only, already checked)."""
    return {"token": TEST_CARDS.get(number) or new_token(), "last4": number[-4:]}


def new_token() -> str:
    return "tok_" + secrets.token_hex(16)

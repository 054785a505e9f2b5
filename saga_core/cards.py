"""Card numbers: the checksum, and the token a number is exchanged for when an order is
accepted, so that no full number is ever stored, sent or logged. The simulated card
processor (``workers/card_processor.py``) charges tokens; its test cards:

| card number        | token                    | on charge                               |
|--------------------|--------------------------|-----------------------------------------|
| 4242424242424242   | tok_visa                 | charged                                 |
| 5555555555554444   | tok_mastercard           | charged                                 |
| 4000000000000002   | tok_chargeDeclined       | declined (business failure)             |
| 4000000000009995   | tok_insufficientFunds    | declined: insufficient funds (business) |
| 4000000000000119   | tok_processingError      | processing error (transient, every try) |

Any other number that passes the Luhn check is charged.
"""

from __future__ import annotations

import hashlib

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
    token = TEST_CARDS.get(number) or "tok_" + hashlib.sha256(number.encode()).hexdigest()[:24]
    return {"token": token, "last4": number[-4:]}

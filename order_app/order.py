"""What an order is: the validation of an order document, and what is stored of it."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from order_app.cards import luhn_ok, tokenize
from saga_app import InvalidInput, document_fingerprint


class InvalidOrder(InvalidInput):
    """An order that cannot be accepted; ``field`` names the offending field."""

    what = "order"


NAME = "order"
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_AMOUNT_CENTS = 100_000_000  # one million in the currency's main unit
ORDER_FIELDS = {
    "order_id",
    "customer_email",
    "items",
    "amount_cents",
    "currency",
    "card_number",
    "shipping_address",
}
ADDRESS_FIELDS = {
    "name": True,
    "line1": True,
    "line2": False,
    "city": True,
    "postal_code": True,
    "country": True,
}
#: A valid order, as a client sends it (the API's documentation shows it; tests start from it).
EXAMPLE_ORDER: dict[str, Any] = {
    "order_id": "ORD-1001",
    "customer_email": "ada@example.com",
    "items": [{"sku": "WIDGET", "quantity": 2}],
    "amount_cents": 4998,
    "currency": "EUR",
    "card_number": "4242 4242 4242 4242",
    "shipping_address": {
        "name": "Ada Lovelace",
        "line1": "12 St James's Square",
        "city": "London",
        "postal_code": "SW1Y 4JH",
        "country": "GB",
    },
}

ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
CURRENCY = re.compile(r"[A-Z]{3}")
COUNTRY = re.compile(r"[A-Z]{2}")


def _string(value: Any, field: str, max_len: int = 200) -> str:
    if not isinstance(value, str):
        raise InvalidOrder(field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidOrder(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidOrder(field, f"must be at most {max_len} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") for ch in value):
        raise InvalidOrder(field, "contains control or unassigned characters")
    return unicodedata.normalize("NFC", value)


def _integer(value: Any, field: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOrder(field, f"must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise InvalidOrder(field, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _match(pattern: re.Pattern[str], value: str, field: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidOrder(field, f"must be {what}")
    return value


def _items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidOrder("items", "must be a list of {sku, quantity}")
    if not 1 <= len(value) <= MAX_ITEMS:
        raise InvalidOrder("items", f"must hold between 1 and {MAX_ITEMS} items")
    items, seen = [], set()
    for i, item in enumerate(value):
        field = f"items[{i}]"
        if not isinstance(item, dict):
            raise InvalidOrder(field, "must be an object with sku and quantity")
        extra = set(item) - {"sku", "quantity", "unit_price_cents"}
        if extra:
            raise InvalidOrder(field, f"unknown field {sorted(extra)[0]!r}")
        if "sku" not in item:
            raise InvalidOrder(f"{field}.sku", "is required")
        if "quantity" not in item:
            raise InvalidOrder(f"{field}.quantity", "is required")
        sku = _match(
            SKU,
            _string(item["sku"], f"{field}.sku", 64),
            f"{field}.sku",
            "letters, digits, '.', '_' or '-'",
        )
        if sku in seen:
            raise InvalidOrder(f"{field}.sku", f"duplicate SKU {sku!r}: give its total once")
        seen.add(sku)
        quantity = _integer(item["quantity"], f"{field}.quantity", 1, MAX_QUANTITY)
        items.append({"sku": sku, "quantity": quantity})
        if "unit_price_cents" in item:
            items[-1]["unit_price_cents"] = _integer(
                item["unit_price_cents"], f"{field}.unit_price_cents", 1, MAX_AMOUNT_CENTS
            )
    priced = ["unit_price_cents" in item for item in items]
    if any(priced) and not all(priced):
        missing = priced.index(False)
        raise InvalidOrder(
            f"items[{missing}].unit_price_cents", "give a unit price for every item or for none"
        )
    return items


def _amount(value: Any, items: list[dict[str, Any]]) -> int:
    amount = _integer(value, "amount_cents", 1, MAX_AMOUNT_CENTS)
    if items and "unit_price_cents" in items[0]:
        expected = sum(i["quantity"] * i["unit_price_cents"] for i in items)
        if amount != expected:
            raise InvalidOrder(
                "amount_cents", f"does not match the items: they come to {expected}, not {amount}"
            )
    return amount


def _card(value: Any) -> dict[str, str]:
    if not isinstance(value, str):
        raise InvalidOrder("card_number", f"must be a string, got {type(value).__name__}")
    digits = re.sub(r"[ -]", "", value)
    # The messages never repeat the number: it must not reach a log.
    if not digits.isascii() or not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise InvalidOrder("card_number", "must be 12 to 19 digits")
    if not luhn_ok(digits):
        raise InvalidOrder("card_number", "is not a valid card number (checksum)")
    return tokenize(digits)


def _address(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidOrder(
            "shipping_address", "must be an object with name, line1, city, postal_code and country"
        )
    extra = set(value) - set(ADDRESS_FIELDS)
    if extra:
        raise InvalidOrder("shipping_address", f"unknown field {sorted(extra)[0]!r}")
    address = {}
    for name, required in ADDRESS_FIELDS.items():
        field = f"shipping_address.{name}"
        if name not in value:
            if required:
                raise InvalidOrder(field, "is required")
            continue
        address[name] = _string(value[name], field)
    _match(
        COUNTRY,
        address["country"],
        "shipping_address.country",
        "a two-letter country code such as 'DE'",
    )
    return address


def fingerprint(document: Any) -> str:
    """What tells one order request from another under the same idempotency key: the
    SHA-256 of its JSON, its card number cut to the last four digits (a hash of the whole
    number could be reversed by trying every number that fits the rest)."""
    if isinstance(document, dict) and isinstance(document.get("card_number"), str):
        document = {**document, "card_number": re.sub(r"[ -]", "", document["card_number"])[-4:]}
    return document_fingerprint(document)


def prepare(document: Any) -> tuple[dict[str, Any], str]:
    """Check an order and return what is stored (the card replaced by a token and its last
    four digits) and the client's idempotency key (the ``order_id``)."""
    if not isinstance(document, dict):
        raise InvalidOrder("order", f"must be a JSON object, got {type(document).__name__}")
    unknown = set(document) - ORDER_FIELDS
    if unknown:
        raise InvalidOrder(sorted(unknown)[0], "unknown field")
    for field in sorted(ORDER_FIELDS):
        if field not in document:
            raise InvalidOrder(field, "is required")
    order_id = _match(
        ORDER_ID,
        _string(document["order_id"], "order_id", 100),
        "order_id",
        "letters, digits, '.', '_', ':' or '-' (at most 100)",
    )
    email = _match(
        EMAIL,
        _string(document["customer_email"], "customer_email", 254),
        "customer_email",
        "an email address such as ada@example.com",
    )
    stored: dict[str, Any] = {
        "order_id": order_id,
        "customer_email": email,
        "items": (items := _items(document["items"])),
        "amount_cents": _amount(document["amount_cents"], items),
        "currency": _match(
            CURRENCY,
            _string(document["currency"], "currency", 3),
            "currency",
            "a three-letter ISO 4217 code such as 'EUR'",
        ),
        "card": _card(document["card_number"]),
        "shipping_address": _address(document["shipping_address"]),
    }
    return stored, order_id

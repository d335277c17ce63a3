"""The synthetic rule world: seeded product-search pairs graded by an explicit guideline of long-tailed rules.

It is the test bed where forgetting of rare rules (mode collapse, DESIGN.md section 4) is measured per rule. A
shopper's query names a product and some constraints (brand, colour, size, gender, quantity, "without X", "new",
a budget, a device the accessory must fit); each listing is that product with exactly one thing changed, and the
rule that names the change decides the grade. So every record has one deciding rule, an exact explanation that
quotes the listing line carrying the evidence, and a grade that a model can only get right by applying the rule.

Frequencies are exact quotas (largest remainder over the rule weights), not draws, so a tail rule's share is the
same at every seed: four head rules cover about 84 % of the pairs, ten tail rules 1.2-2.5 % each. Listings are
grouped under queries (3-6 per query, `qid` = the group) so that splits by query and nDCG over groups work.

    python -m training.rule_world --write-guideline     # refresh training/configs/rule_world_guideline.txt
    python -m training.rule_world --sample 5 --seed 0   # print a few records as JSONL
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from afrl.contract import Explanation
from training.data import Record

GUIDELINE_PATH = Path(__file__).resolve().parent / "configs" / "rule_world_guideline.txt"


@dataclass(frozen=True)
class Rule:
    """One guideline rule: its name (cited in Reasoning), the grade it decides and its share of the pairs."""

    name: str
    grade: int
    weight: float
    description: str
    head: bool


RULES: list[Rule] = [
    Rule("exact_match", 3, 0.338, "the listing is the product asked for and meets every stated constraint", True),
    Rule("wrong_category", 0, 0.250, "the listing is from a different product category", True),
    Rule(
        "same_category_different_product",
        1,
        0.150,
        "the listing is another kind of product from the same category",
        True,
    ),
    Rule("colour_mismatch", 2, 0.100, "the right product in a different colour than asked", True),
    Rule("accessory_for_product", 1, 0.025, "the listing is an accessory for the product, not the product", False),
    Rule("brand_mismatch", 1, 0.020, "the query names a brand and the listing is another brand", False),
    Rule("size_mismatch", 1, 0.020, "a different size or amount than asked (after unit conversion)", False),
    Rule("over_budget", 1, 0.017, "the price is above the budget in the query", False),
    Rule("gender_mismatch", 1, 0.015, "the query asks for men's or women's and the listing is for the other", False),
    Rule("multipack", 2, 0.015, "the right product, sold only as a multipack when one item is asked", False),
    Rule("used_when_new", 1, 0.014, "the query asks for new and the listing is used or refurbished", False),
    Rule("negation_violated", 0, 0.012, 'the query says "without X" and the listing contains X', False),
    Rule(
        "unit_conversion",
        3,
        0.012,
        "the amount matches in another unit (1 kg = 1000 g, 1 l = 1000 ml): a match",
        False,
    ),
    Rule("incompatible_model", 0, 0.012, "an accessory for a different device model than the query names", False),
]
RULES_BY_NAME = {r.name: r for r in RULES}
HEAD_RULES = [r.name for r in RULES if r.head]
TAIL_RULES = [r.name for r in RULES if not r.head]

GUIDELINE = "\n".join(
    [
        "Grade how relevant the product listing is to the shopping query, 0-3, by the rule that applies:",
        *(f"{r.name} ({r.grade}): {r.description}." for r in RULES),
        "Write the grade, then Intent, Evidence (a quote from the listing), Reasoning (name the rule), Verdict.",
    ]
)


def write_guideline(path: str | Path = GUIDELINE_PATH) -> Path:
    """Write GUIDELINE to the instruction file that configs point at (a test keeps the two identical)."""
    path = Path(path)
    path.write_text(GUIDELINE + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- the world

COLOURS = ["black", "white", "blue", "red", "green", "grey"]


@dataclass(frozen=True)
class Category:
    name: str
    types: tuple[str, ...]
    brands: tuple[str, ...]
    price: tuple[int, int]
    features: frozenset[str]  # which constraints a query in this category can state
    sizes: tuple[str, ...] = ()
    accessories: tuple[str, ...] = ()
    amounts: tuple[tuple[float, str], ...] = ()  # (amount, unit) a query can ask for
    excludable: tuple[str, ...] = ()  # X in "without X"
    models: tuple[str, ...] = ()  # devices an accessory is made for


CATEGORIES = [
    Category(
        "footwear",
        ("running shoes", "hiking boots", "sandals"),
        ("Trailmax", "Stridex", "Pacefield"),
        (40, 160),
        frozenset({"brand", "colour", "size", "gender", "price", "accessory"}),
        sizes=tuple(f"EU {n}" for n in range(38, 47)),
        accessories=("insoles", "shoe laces", "shoe cleaning kit"),
    ),
    Category(
        "clothing",
        ("rain jacket", "t-shirt", "hoodie"),
        ("Northwind", "Cottonry", "Urbanite"),
        (15, 120),
        frozenset({"brand", "colour", "size", "gender", "price", "multipack"}),
        sizes=("S", "M", "L", "XL"),
    ),
    Category(
        "electronics",
        ("smartphone", "tablet", "smartwatch"),
        ("Voltra", "Novix", "Pixelon"),
        (120, 900),
        frozenset({"brand", "colour", "price", "condition", "accessory"}),
        accessories=("charger", "protective case", "screen protector"),
    ),
    Category(
        "audio",
        ("headphones", "earbuds", "bluetooth speaker"),
        ("Sonora", "Bassline", "Echoa"),
        (25, 300),
        frozenset({"brand", "colour", "price", "condition", "accessory"}),
        accessories=("ear cushions", "carrying case", "charging cable"),
    ),
    Category(
        "phone accessories",
        ("phone case", "screen protector", "charging cable"),
        ("Armorlux", "Clearguard", "Linkcell"),
        (8, 45),
        frozenset({"brand", "colour", "price", "multipack", "model"}),
        models=("Nova 11", "Nova 12", "Zephyr X2", "Zephyr X3", "Orbit 5", "Orbit 6"),
    ),
    Category(
        "groceries",
        ("coffee beans", "granola", "peanut butter"),
        ("Brewhaus", "Oakfield", "Goldleaf"),
        (4, 30),
        frozenset({"brand", "price", "quantity", "negation", "multipack"}),
        amounts=((250, "g"), (500, "g"), (1, "kg"), (2, "kg")),
        excludable=("added sugar", "palm oil", "gluten"),
    ),
    Category(
        "personal care",
        ("shampoo", "conditioner", "body wash"),
        ("Purelle", "Aquaveda", "Mintra"),
        (3, 25),
        frozenset({"brand", "price", "quantity", "negation", "multipack"}),
        amounts=((250, "ml"), (500, "ml"), (1, "l"), (2, "l")),
        excludable=("sulfates", "parabens", "fragrance"),
    ),
]

# The query constraint each rule needs (None: any query will do).
RULE_NEEDS: dict[str, str | None] = {
    "exact_match": None,
    "wrong_category": None,
    "same_category_different_product": None,
    "colour_mismatch": "colour",
    "accessory_for_product": "accessory",
    "brand_mismatch": "brand",
    "size_mismatch": "size|quantity",
    "over_budget": "price",
    "gender_mismatch": "gender",
    "multipack": "multipack",
    "used_when_new": "condition",
    "negation_violated": "negation",
    "unit_conversion": "quantity",
    "incompatible_model": "model",
}
# Constraints a query may state without a rule needing them (so the query alone never gives the rule away).
_OPTIONAL = ("brand", "colour", "size", "gender", "price", "quantity", "negation", "condition")


def _supports(category: Category, rule: str) -> bool:
    need = RULE_NEEDS[rule]
    return need is None or any(n in category.features for n in need.split("|"))


@dataclass
class Product:
    """One listing (or the product a query asks for); a field left None is not stated."""

    category: Category
    type: str
    brand: str
    price: int
    colour: str | None = None
    size: str | None = None
    gender: str | None = None
    amount: tuple[float, str] | None = None
    excluded: str | None = None  # the ingredient the listing is free of / the query excludes
    contains: bool = False  # the listing contains `excluded` instead of being free of it
    condition: str | None = None
    model: str | None = None
    accessory_of: str | None = None
    pack: int = 1


@dataclass
class Query:
    product: Product
    stated: set[str] = field(default_factory=set)
    budget: int | None = None

    def text(self) -> str:
        p, s = self.product, self.stated
        words = []
        if "condition" in s:
            words.append("new")
        if "gender" in s:
            words.append(f"{p.gender}'s")
        if "colour" in s:
            words.append(str(p.colour))
        if "brand" in s:
            words.append(p.brand)
        words.append(p.type)
        if "model" in s:
            words.append(f"for {p.model}")
        if "size" in s:
            words.append(f"size {p.size}")
        if "quantity" in s and p.amount:
            words.append(_amount(p.amount))
        if "negation" in s:
            words.append(f"without {p.excluded}")
        if self.budget is not None:
            words.append(f"under ${self.budget}")
        return " ".join(words)


def _amount(amount: tuple[float, str]) -> str:
    value, unit = amount
    return f"{value:g} {unit}"


def _convert(amount: tuple[float, str]) -> tuple[float, str]:
    """The same amount in the other unit: 1 kg <-> 1000 g, 1 l <-> 1000 ml."""
    value, unit = amount
    return {"g": (value / 1000, "kg"), "kg": (value * 1000, "g"), "ml": (value / 1000, "l"), "l": (value * 1000, "ml")}[
        unit
    ]


def _lines(p: Product) -> dict[str, str]:
    """The listing as labelled sentences; Evidence quotes one of them verbatim."""
    gender = f"{p.gender}'s " if p.gender else ""
    title = f"{p.brand} {gender}{p.type}"
    if p.accessory_of:
        title = f"{p.brand} {p.type} for {p.accessory_of}"
    elif p.model:
        title = f"{p.brand} {p.type} for {p.model}"
    lines = {"title": title + "."}
    if p.colour:
        lines["colour"] = f"Colour: {p.colour}."
    if p.size:
        lines["size"] = f"Size: {p.size}."
    if p.amount:
        lines["quantity"] = f"Net quantity: {_amount(p.amount)}."
    if p.excluded:
        lines["negation"] = f"Contains {p.excluded}." if p.contains else f"Free from {p.excluded}."
    if p.condition:
        lines["condition"] = f"Condition: {p.condition}."
    if p.pack > 1:
        lines["multipack"] = f"Sold as a pack of {p.pack}."
    lines["price"] = f"Price: ${p.price}."
    return lines


def _document(p: Product) -> str:
    return " ".join(_lines(p).values())


def _random_product(rng: random.Random, cat: Category) -> Product:
    """A product of the category with every attribute the category has, chosen at random."""
    f = cat.features
    return Product(
        category=cat,
        type=rng.choice(cat.types),
        brand=rng.choice(cat.brands),
        price=rng.randint(*cat.price),
        colour=rng.choice(COLOURS) if "colour" in f else None,
        size=rng.choice(cat.sizes) if "size" in f else None,
        gender=rng.choice(["men", "women"]) if "gender" in f else None,
        amount=rng.choice(cat.amounts) if "quantity" in f else None,
        excluded=rng.choice(cat.excludable) if "negation" in f else None,
        contains=rng.random() < 0.5 if "negation" in f else False,
        condition="new" if "condition" in f else None,
        model=rng.choice(cat.models) if "model" in f else None,
    )


def _matching(rng: random.Random, q: Query) -> Product:
    """A listing that meets every constraint of the query; unstated attributes vary."""
    p = _random_product(rng, q.product.category)
    t = q.product
    p = replace(p, type=t.type)
    for attr in ("brand", "colour", "size", "gender", "model"):
        if attr in q.stated:
            p = replace(p, **{attr: getattr(t, attr)})
    if "quantity" in q.stated:
        p = replace(p, amount=t.amount)
    if "negation" in q.stated:
        p = replace(p, excluded=t.excluded, contains=False)
    if q.budget is not None:
        lo = q.product.category.price[0]
        p = replace(p, price=rng.randint(min(lo, q.budget), q.budget))
    return p


def _other(rng: random.Random, options: tuple[str, ...] | list[str], current: str | None) -> str:
    return rng.choice([o for o in options if o != current])


# Each rule: (query, matching listing, rng) -> (listing with the rule's one change, key of the Evidence line,
# Reasoning after "rule <name>: ").
Violation = Callable[[Query, Product, random.Random], tuple[Product, str, str]]


def _exact(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    stated = sorted(q.stated - {"price"}) + (["budget"] if q.budget is not None else [])
    detail = f" ({', '.join(stated)} as asked)" if stated else ""
    return p, "title", f"the listing is the {p.type} asked for{detail}"


def _wrong_category(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    cat = rng.choice([c for c in CATEGORIES if c.name != q.product.category.name])
    other = _random_product(rng, cat)
    return other, "title", f"a {other.type} is {cat.name}, not {q.product.category.name} like a {q.product.type}"


def _same_category(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, type=_other(rng, p.category.types, p.type))
    return other, "title", f"a {other.type} is {p.category.name} but not a {q.product.type}"


def _colour(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, colour=_other(rng, COLOURS, p.colour))
    return other, "colour", f"the query asks for {q.product.colour}, the listing is {other.colour}"


def _accessory(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    acc = rng.choice(p.category.accessories)
    other = replace(p, type=acc, accessory_of=p.type, size=None, gender=None)
    return other, "title", f"{acc} for {p.type} are an accessory, not the {p.type} itself"


def _brand(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, brand=_other(rng, p.category.brands, p.brand))
    return other, "title", f"the query names {q.product.brand}, the listing is {other.brand}"


def _size(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    if "size" in q.stated:
        other = replace(p, size=_other(rng, p.category.sizes, p.size))
        return other, "size", f"the query asks for size {q.product.size}, the listing is {other.size}"
    assert p.amount is not None
    asked = p.amount
    same = {asked, _convert(asked)}
    amount = rng.choice([a for a in p.category.amounts if a not in same and _convert(a) not in same])
    if rng.random() < 0.5:
        amount = _convert(amount)  # a different amount in either unit: conversion must not make it a match
    other = replace(p, amount=amount)
    return other, "quantity", f"the query asks for {_amount(asked)}, the listing has {_amount(amount)}"


def _over_budget(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    assert q.budget is not None
    other = replace(p, price=q.budget + rng.randint(1, max(2, q.budget // 2)))
    return other, "price", f"${other.price} is above the budget of ${q.budget}"


def _gender(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, gender="women" if p.gender == "men" else "men")
    return other, "title", f"the query asks for {q.product.gender}'s, the listing is {other.gender}'s"


def _multipack(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, pack=rng.choice([2, 3, 4, 6]))
    return other, "multipack", f"the right {p.type}, but only as a pack of {other.pack}"


def _used(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, condition=rng.choice(["used", "refurbished"]))
    return other, "condition", f"the query asks for new, the listing is {other.condition}"


def _negation(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, contains=True)
    return other, "negation", f"the query excludes {p.excluded} and the listing contains it"


def _unit(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    assert p.amount is not None
    other = replace(p, amount=_convert(p.amount))
    assert other.amount is not None
    return other, "quantity", f"{_amount(other.amount)} equals the {_amount(p.amount)} asked for"


def _model(q: Query, p: Product, rng: random.Random) -> tuple[Product, str, str]:
    other = replace(p, model=_other(rng, p.category.models, p.model))
    return other, "title", f"made for {other.model}, it does not fit the {q.product.model} in the query"


VIOLATIONS: dict[str, Violation] = {
    "exact_match": _exact,
    "wrong_category": _wrong_category,
    "same_category_different_product": _same_category,
    "colour_mismatch": _colour,
    "accessory_for_product": _accessory,
    "brand_mismatch": _brand,
    "size_mismatch": _size,
    "over_budget": _over_budget,
    "gender_mismatch": _gender,
    "multipack": _multipack,
    "used_when_new": _used,
    "negation_violated": _negation,
    "unit_conversion": _unit,
    "incompatible_model": _model,
}


def quotas(n: int) -> dict[str, int]:
    """Records per rule: n times each weight, rounded by largest remainder so the counts sum to n."""
    total = sum(r.weight for r in RULES)
    raw = {r.name: n * r.weight / total for r in RULES}
    counts = {k: int(v) for k, v in raw.items()}
    by_remainder = sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _groups(rng: random.Random, rules: list[str]) -> list[tuple[Category, list[str]]]:
    """Cut the shuffled rule sequence into query groups of 3-6 whose rules one category can all support."""
    groups: list[tuple[list[Category], list[str]]] = []
    size = 0
    for rule in rules:
        fits = [c for c in groups[-1][0] if _supports(c, rule)] if groups else []
        if groups and fits and len(groups[-1][1]) < size:
            groups[-1] = (fits, [*groups[-1][1], rule])
        else:
            size = rng.randint(3, 6)
            groups.append(([c for c in CATEGORIES if _supports(c, rule)], [rule]))
    return [(rng.choice(cats), members) for cats, members in groups]


def _make_query(rng: random.Random, cat: Category, rules: list[str]) -> Query:
    target = _random_product(rng, cat)
    stated = set()
    for rule in rules:
        need = RULE_NEEDS[rule]
        if need:
            stated.add(next(n for n in need.split("|") if n in cat.features))
    stated |= {o for o in _OPTIONAL if o in cat.features and rng.random() < 0.25}
    if "model" in cat.features:
        stated.add("model")  # an accessory query always names the device it is for
    budget = None
    if "price" in stated:
        stated.discard("price")
        lo, hi = cat.price
        budget = round(rng.randint(lo + (hi - lo) // 3, hi), -1 if hi > 50 else 0)
    return Query(target, stated, budget)


def _intent(q: Query) -> str:
    return f"the user wants to buy {q.text()}"


def generate_records(n: int, seed: int = 0) -> list[Record]:
    """n rule-world records, deterministic for a seed; each carries its rule, qid and an exact explanation."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    sequence = [name for name, count in quotas(n).items() for _ in range(count)]
    rng.shuffle(sequence)
    records: list[Record] = []
    for g, (cat, rules) in enumerate(_groups(rng, sequence)):
        query = _make_query(rng, cat, rules)
        qtext = query.text()
        for rule_name in rules:
            rule = RULES_BY_NAME[rule_name]
            listing, key, why = VIOLATIONS[rule_name](query, _matching(rng, query), rng)
            lines = _lines(listing)
            document = _document(listing)
            explanation = Explanation(
                intent=_intent(query),
                evidence=lines[key].rstrip("."),
                reasoning=f"rule {rule.name}: {why}",
                verdict=rule.grade,
            )
            records.append(
                Record(
                    id=f"rules-{seed}-{len(records):06d}",
                    query=qtext,
                    document=document,
                    grade=rule.grade,
                    explanation=explanation.to_text(),
                    rule=rule.name,
                    source="rules",
                    qid=f"rules-{seed}-q{g:05d}",
                )
            )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-guideline", action="store_true", help=f"write the guideline to {GUIDELINE_PATH}")
    parser.add_argument("--sample", type=int, default=0, help="print N records as JSONL")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.write_guideline:
        print(write_guideline())
    for record in generate_records(args.sample, args.seed):
        print(json.dumps(record.to_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

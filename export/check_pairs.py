"""Built-in check pairs for parity and the INT8 gate when `--check-data` is not given.

Varied on purpose: short and long documents, web questions and product search, relevant and irrelevant, digits,
punctuation and non-ASCII text, so that the prompts span many lengths (padding) and token kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

BUILTIN_PAIRS: list[tuple[str, str]] = [
    ("population of berlin", "Berlin had a population of 3,520,031 registered inhabitants in 2015."),
    ("population of berlin", "Berlin is the capital and largest city of Germany."),
    ("population of berlin", "A direct flight from Berlin to New York takes about 9 hours."),
    ("how long is the flight from berlin to new york", "A direct flight from Berlin to New York takes about 9 hours."),
    ("how long is the flight from berlin to new york", "New York City has five boroughs."),
    ("what is the boiling point of water", "At sea level, water boils at 100 degrees Celsius (212 °F)."),
    ("what is the boiling point of water", "Water covers about 71% of the Earth's surface."),
    ("who wrote pride and prejudice", "Pride and Prejudice is an 1813 novel of manners by Jane Austen."),
    ("who wrote pride and prejudice", "The novel has been adapted for film and television many times."),
    ("symptoms of vitamin d deficiency", "Vitamin D deficiency can cause bone pain, muscle weakness and fatigue."),
    ("symptoms of vitamin d deficiency", "Vitamin C is found in citrus fruit."),
    ("capital of australia", "Canberra is the capital city of Australia; Sydney is its largest city."),
    ("capital of australia", "Australia is famous for kangaroos, koalas and the Great Barrier Reef. " * 6),
    (
        "define photosynthesis",
        "Photosynthesis is the process by which plants use light to make sugar from CO2 and water.",
    ),
    ("define photosynthesis", "Plants need water."),
    ("waterproof hiking boots men size 42", "Men's waterproof leather hiking boots, Gore-Tex lining, sizes 40-47."),
    ("waterproof hiking boots men size 42", "Women's running shoes, breathable mesh, size 38."),
    ("waterproof hiking boots men size 42", "Waterproofing spray for leather boots, 300 ml."),
    ("iphone 15 case", "Silicone case for iPhone 15, MagSafe compatible, midnight blue."),
    ("iphone 15 case", "iPhone 15 Pro Max 256 GB, natural titanium."),
    ("iphone 15 case", "Galaxy S24 protective case with kickstand."),
    ("laptop without touchscreen", "14-inch laptop with touchscreen and stylus support."),
    ("1 litre water bottle", "Stainless steel bottle, 1000 ml, keeps drinks cold for 24 hours."),
    ("1 litre water bottle", "Glass bottle, 500 ml."),
    ("cheap flights", "q"),
    ("x", "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt. " * 8),
    ("wie hoch ist die zugspitze", "Die Zugspitze ist mit 2962 m ü. NN der höchste Berg Deutschlands."),
    ("température de fusion du fer", "Le fer fond à 1538 °C."),
    ("what does https stand for", "HTTPS: Hypertext Transfer Protocol Secure (RFC 2818)."),
    ("python list comprehension", "squares = [x * x for x in range(10)]  # a list comprehension in Python"),
    ("best time to visit japan", "Spring (March-May) and autumn (Sept-Nov) are the best seasons to visit Japan."),
    ("best time to visit japan", "Tokyo's population is about 14 million. " + "Japan has 47 prefectures. " * 10),
]


def load_check_pairs(path: str | Path | None, limit: int | None = None) -> list[tuple[str, str]]:
    """(query, document) pairs from a JSONL file of records with "query" and "document", or the built-in set."""
    if path is None:
        pairs = list(BUILTIN_PAIRS)
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"check data {path} not found: pass a JSONL file of {{query, document}} records")
        pairs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                pairs.append((str(record["query"]), str(record["document"])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{n}: not a JSON record with 'query' and 'document' ({e}); check data is JSONL"
                ) from e
        if not pairs:
            raise ValueError(f"check data {path} has no records")
    return pairs[:limit] if limit else pairs

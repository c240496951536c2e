"""Write the sample raw files that ship in eagle3kit/sources/samples/.

The samples are written by this project (templated, so that a tiny model trained on
them for a minute on a CPU learns real structure). They are in each built-in source's
own raw format and include records that exercise every clean-up rule. Deterministic:
running it again gives the same bytes.

    python scripts/make_samples.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "eagle3kit" / "sources" / "samples"

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Canada": "Ottawa",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Chile": "Santiago",
    "Greece": "Athens", "Poland": "Warsaw", "Cuba": "Havana", "Ireland": "Dublin", "Portugal": "Lisbon",
}
COLOURS = {
    "grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow",
    "a tomato": "red", "an orange": "orange", "a plum": "purple", "chocolate": "brown", "ash": "grey",
}
WORDS = {
    "river": "a natural stream of water that flows to the sea",
    "mountain": "a large natural rise of the land, much higher than a hill",
    "library": "a place where books are kept for people to read or borrow",
    "bridge": "a structure that carries a road or path across a river or valley",
    "engine": "a machine that turns energy into motion",
    "garden": "a piece of land where flowers or vegetables are grown",
    "island": "a piece of land surrounded by water",
    "clock": "a device that shows the time",
    "planet": "a large body that moves around a star",
    "forest": "a large area covered with trees",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SYSTEM = "You are a helpful assistant. Answer briefly and clearly."


def turn(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randrange(2, 60), rng.randrange(2, 60)
        return f"What is {a} plus {b}?", f"{a} plus {b} equals {a + b}. So the answer is {a + b}."
    if kind == 1:
        country = rng.choice(sorted(CAPITALS))
        return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."
    if kind == 2:
        thing = rng.choice(sorted(COLOURS))
        return f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is usually {COLOURS[thing]}."
    if kind == 3:
        word = rng.choice(sorted(WORDS))
        return f"What does the word \"{word}\" mean?", f"A {word} is {WORDS[word]}."
    day = rng.randrange(7)
    return (f"Which day comes after {DAYS[day]}?",
            f"The day after {DAYS[day]} is {DAYS[(day + 1) % 7]}. The day before it is {DAYS[day - 1]}.")


def conversation(rng: random.Random) -> list[tuple[str, str]]:
    pairs = [turn(rng) for _ in range(rng.randint(2, 5))]
    return [m for q, a in pairs for m in (("user", q), ("assistant", a))]


def ultrachat(rng: random.Random, n: int) -> list[dict]:
    records = []
    for i in range(n):
        messages = [{"role": r, "content": c} for r, c in conversation(rng)]
        if i % 17 == 3:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        if i % 23 == 5:
            messages.append({"role": "user", "content": "Thanks! One more question later."})  # trailing human
        if i % 41 == 7:
            messages[1]["content"] = "   "  # empty answer: cut -> too short
        if i % 53 == 11:
            messages.insert(1, {"role": "tool", "content": "lookup()"})  # unknown role
        records.append({"prompt": messages[0]["content"], "prompt_id": f"{i:08x}", "messages": messages})
    records.append(dict(records[0], prompt_id="dup-of-0"))  # an exact duplicate
    return records


def sharegpt(rng: random.Random, n: int) -> list[dict]:
    role = {"user": "human", "assistant": "gpt"}
    records = []
    for i in range(n):
        conv = [{"from": role[r], "value": c} for r, c in conversation(rng)]
        if i % 19 == 2:
            conv.insert(0, {"from": "gpt", "value": "Hello! How can I help?"})  # before the first human
        if i % 29 == 4:
            conv.append({"from": "human", "value": "And what about tomorrow?"})
        if i % 31 == 6 and len(conv) >= 4:
            conv[2], conv[3] = conv[3], conv[2]  # breaks the alternation: cut there
        if i % 13 == 0:
            conv = [dict(m, **{"from": "chatgpt"}) if m["from"] == "gpt" else m for m in conv]
        records.append({"id": f"sg{i:05d}_0", "conversations": conv})
    return records


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261128)
    with open(OUT / "ultrachat_sample.jsonl", "w", encoding="utf-8") as f:
        for record in ultrachat(rng, 400):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(OUT / "sharegpt_sample.json", "w", encoding="utf-8") as f:
        json.dump(sharegpt(rng, 250), f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote samples to {OUT}")


if __name__ == "__main__":
    main()

"""Generate the data behind the shipped tasks (deterministic: same seed, same bytes).

Run ``python scripts/make_task_data.py`` after changing it and commit ``tasks/data/``; a test checks
that the committed files equal a fresh generation.

- ``arith``: arithmetic questions answered in words (" forty-two"), four multi-token choices, asked
  5-shot so every choice of an item shares a long context: the multiple-choice workload.
- ``copy``: copy a short word list; greedy generation until a newline: the generate_until workload.
- ``prose``: paragraphs from a small grammar, scored as rolling loglikelihood (perplexity).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "tasks" / "data"
SEED = 20261122

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen " \
        "fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_NOUNS = "river garden engine teacher window market planet signal harbor forest lantern " \
         "village mirror journey bridge letter orchard castle meadow compass".split()
_VERBS = "follows reaches carries watches builds finds crosses guards remembers opens".split()
_ADJS = "quiet bright ancient narrow golden distant heavy simple hidden gentle".split()


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def arith_rows(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        answer = a + b
        wrong = set()
        while len(wrong) < 3:
            candidate = answer + rng.choice([-11, -10, -2, -1, 1, 2, 9, 10, 11, 20])
            if candidate != answer and candidate > 0:
                wrong.add(candidate)
        choices = [answer, *sorted(wrong)]
        rng.shuffle(choices)
        rows.append({
            "question": f"What is {a} plus {b}?",
            "choices": [number_words(c) for c in choices],
            "label": choices.index(answer),
        })
    return rows


def copy_rows(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        words = rng.sample(_NOUNS + _ADJS, rng.randint(2, 4))
        rows.append({"words": " ".join(words)})
    return rows


def _sentence(rng: random.Random) -> str:
    subject = f"the {rng.choice(_ADJS)} {rng.choice(_NOUNS)}"
    obj = f"the {rng.choice(_NOUNS)}"
    tail = rng.choice(["", f" near the {rng.choice(_NOUNS)}", f" before the {rng.choice(_ADJS)} night"])
    return f"{subject} {rng.choice(_VERBS)} {obj}{tail}.".capitalize()


def prose_rows(rng: random.Random, count: int) -> list[dict]:
    return [
        {"text": " ".join(_sentence(rng) for _ in range(rng.randint(12, 40)))} for _ in range(count)
    ]


def generate() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    return {
        "arith_train": arith_rows(rng, 20),
        "arith_test": arith_rows(rng, 60),
        "copy_train": copy_rows(rng, 10),
        "copy_test": copy_rows(rng, 30),
        "prose_test": prose_rows(rng, 12),
    }


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, rows in generate().items():
        (DATA_DIR / f"{name}.jsonl").write_text(render(rows))


if __name__ == "__main__":
    main()

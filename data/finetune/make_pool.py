#!/usr/bin/env python3
"""Generate the fine-tuning prompt pool (``data/finetune/pool.jsonl``).

The pool is built from templates x fillers and is fully deterministic: no
randomness, no dependencies beyond the standard library, so running

    python3 data/finetune/make_pool.py            # writes pool.jsonl next to this file
    python3 data/finetune/make_pool.py OUT.jsonl  # writes somewhere else

always reproduces the committed file byte for byte.  The prompts cover the
four kinds of evaluation task (coding, math, stories, completion) plus
everyday questions and short explanations (task ``chat``); none of them may
overlap the evaluation prompts in ``data/prompts/`` (``tests/test_prompts.py``
checks this).  Categories are interleaved round-robin, so any prefix of the
pool (e.g. for a quick fine-tune) covers every kind of task.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# --------------------------------------------------------------------------
# chat: everyday questions and short explanations
# --------------------------------------------------------------------------

ADVICE_TEMPLATES = [
    "What is a good way to {}?",
    "Can you give me three tips to {}?",
    "I want to {}. Where should I start?",
]
ADVICE_GOALS = [
    "keep houseplants alive",
    "learn to cook simple meals",
    "save money on groceries",
    "fall asleep faster",
    "remember new people's names",
    "keep a tidy desk",
    "start running as a beginner",
    "make a weekly budget",
    "learn a new language at home",
    "prepare for a job interview",
    "spend less time on my phone",
    "make friends in a new city",
    "pack light for a weekend trip",
    "keep my bike in good condition",
    "study for an exam without cramming",
    "write a polite complaint email",
    "organise a small birthday party",
    "get better at public speaking",
    "grow herbs on a windowsill",
    "stay focused while working from home",
]

EXPLAIN_TEMPLATES = [
    "Explain {} in simple terms.",
    "Explain to a ten-year-old, in two or three sentences, {}.",
]
EXPLAIN_TOPICS = [
    "how a rainbow forms",
    "what photosynthesis is",
    "how vaccines help the body",
    "why we have seasons",
    "how a refrigerator keeps food cold",
    "what inflation means",
    "how bees make honey",
    "what a computer's memory does",
    "how tides work",
    "why bread rises",
    "what gravity is",
    "how a bicycle stays upright",
    "what a recipe's yield means",
    "how a compass works",
    "why leaves change colour in autumn",
    "what an email attachment is",
    "how a library catalogue works",
    "why the sky is blue",
    "what a fever is",
    "how recycling plastic works",
    "what a password manager does",
    "how an electric kettle heats water",
]

WHY_QUESTIONS = [
    "Why do onions make people cry?",
    "Why does ice float on water?",
    "Why do cats purr?",
    "Why do we yawn?",
    "Why is it colder on top of a mountain?",
    "Why do some birds fly south for the winter?",
    "Why does metal feel colder than wood at the same temperature?",
    "Why do we get hiccups?",
    "Why does popcorn pop?",
    "Why do our fingers wrinkle in the bath?",
    "Why do stars twinkle?",
    "Why does the moon look bigger near the horizon?",
    "What is the difference between weather and climate?",
    "What is the difference between a virus and a bacterium?",
    "What is the difference between a lake and a pond?",
    "What is the difference between baking soda and baking powder?",
]

# --------------------------------------------------------------------------
# coding: small programming tasks
# --------------------------------------------------------------------------

CODE_TEMPLATES = [
    "Write a Python function that {}.",
    "How would I write a Python function that {}? Please include a short example.",
]
CODE_TASKS = [
    "returns the average of a list of numbers",
    "counts how many times a given character appears in a string",
    "removes all spaces from a string",
    "returns the largest of three numbers",
    "checks whether a number is even",
    "converts kilometers to miles",
    "reverses the order of the words in a sentence",
    "returns the product of all numbers in a list",
    "squares every number in a list",
    "returns the number of lines in a multi-line string",
    "finds the shortest word in a sentence",
    "checks whether a list is sorted in ascending order",
    "returns the last n items of a list",
    "builds a dictionary that maps each letter of a word to its position",
    "converts minutes into hours and minutes",
    "checks whether two strings have the same length",
    "removes all negative numbers from a list",
    "returns the initials of a full name",
    "counts the uppercase letters in a string",
    "returns a list of the even numbers up to n",
    "pads a number with leading zeros to a width of five",
    "swaps the keys and values of a dictionary",
    "joins a list of words into one string separated by commas",
    "returns True if a string contains only digits",
    "computes the area of a circle from its radius",
    "repeats a string a given number of times with a dash between copies",
    "finds the index of the smallest number in a list",
    "returns the number of days in a given month of a non-leap year",
    "converts a list of strings to upper case",
    "adds up the numbers from 1 to n",
]

OTHER_CODE_TASKS = [
    "Write a small JavaScript function that returns the sum of the even numbers in an array.",
    "Write a JavaScript function that removes duplicate values from an array.",
    "Write a JavaScript function that returns the longest string in an array of strings.",
    "Write a JavaScript function that counts the words in a sentence.",
    "Write a JavaScript function that formats a number of seconds as mm:ss.",
    "Write a JavaScript function that returns a random integer between two given numbers.",
    "Write a JavaScript function that shuffles an array in place.",
    "Write a JavaScript function that checks whether every item in an array is a number.",
    "Write a JavaScript function that converts a phrase such as 'Hello World' to 'hello-world'.",
    "Write a JavaScript function that returns today's date as a YYYY-MM-DD string.",
    "Write a JavaScript function that turns an object into a list of key=value strings.",
    "Write a JavaScript function that checks whether a string starts with a capital letter.",
    "Write a C function that returns the sum of an array of integers.",
    "Write a C program that prints the numbers from 1 to 10, one per line.",
    "Write a Go function that returns the maximum value in a slice of integers.",
    "Write a Rust function that checks whether a number is odd.",
    "Write a Bash script that prints the current date and the name of the user.",
    "Write a SQL query that counts the rows in a table called `books`.",
    "Write a Java method that returns the length of the longest word in a sentence.",
    "Write a shell command that lists the five largest files in a folder.",
]

# --------------------------------------------------------------------------
# math: small word problems (answers computed here)
# --------------------------------------------------------------------------

NAMES = ["Aiden", "Bea", "Chloe", "Dmitri", "Eli", "Fatima", "Gus", "Hana",
         "Ivan", "Jade", "Kofi", "Lucy", "Mateo", "Nora", "Omar", "Pia"]
ITEMS = ["seashells", "stamps", "crayons", "buttons", "postcards", "pebbles",
         "comic books", "toy cars"]
FOODS = [("oranges", 0.4), ("bananas", 0.25), ("bread rolls", 0.5),
         ("yogurt cups", 0.75), ("apples", 0.3), ("carrots", 0.2)]


def _fmt_money(x: float) -> str:
    return f"${x:.2f}"


def _num(x: float):
    x = round(x, 6)
    return int(x) if float(x).is_integer() else x


def math_prompts() -> list[dict]:
    out: list[dict] = []
    for i in range(14):
        name = NAMES[i % len(NAMES)]
        item = ITEMS[i % len(ITEMS)]
        a, b, c = 20 + 3 * i, 5 + (i % 7), 4 + (2 * i) % 9
        out.append({"prompt": f"{name} collected {a} {item}. A friend gave {name} {b} more, "
                              f"and then {name} lost {c}. How many {item} does {name} have now?",
                    "answer": _num(a + b - c)})
    for i in range(14):
        name = NAMES[(i + 5) % len(NAMES)]
        food, price = FOODS[i % len(FOODS)]
        n = 3 + i % 8
        out.append({"prompt": f"{food.capitalize()} cost {_fmt_money(price)} each. "
                              f"{name} buys {n} of them. How much does {name} spend in dollars?",
                    "answer": _num(price * n)})
    for i in range(12):
        boxes, per = 3 + i % 6, 6 + (i * 5) % 13
        name = NAMES[(i + 9) % len(NAMES)]
        out.append({"prompt": f"{name} packs {boxes} boxes with {per} books in each box. "
                              f"How many books are packed altogether?",
                    "answer": _num(boxes * per)})
    for i in range(12):
        people = 2 + i % 5
        total = people * (4 + (i * 3) % 11)
        name = NAMES[(i + 2) % len(NAMES)]
        out.append({"prompt": f"{name} shares {total} grapes equally among {people} children. "
                              f"How many grapes does each child get?",
                    "answer": _num(total // people)})
    for i in range(12):
        speed = 30 + 10 * (i % 6)
        hours = 2 + i % 4
        vehicle = ["bus", "boat", "car", "van"][i % 4]
        out.append({"prompt": f"A {vehicle} travels at {speed} km per hour for {hours} hours. "
                              f"How many kilometers does it travel?",
                    "answer": _num(speed * hours)})
    for i in range(12):
        length, width = 4 + i % 9, 3 + (i * 2) % 7
        thing = ["rug", "table top", "flower bed", "poster"][i % 4]
        unit = ["meters", "feet", "meters", "inches"][i % 4]
        out.append({"prompt": f"A rectangular {thing} is {length} {unit} long and {width} {unit} wide. "
                              f"What is its area in square {unit}?",
                    "answer": _num(length * width)})
    for i in range(12):
        name = NAMES[(i + 11) % len(NAMES)]
        minutes, days = 15 + 5 * (i % 6), 3 + i % 5
        hobby = ["practises the piano", "reads", "walks the dog", "draws"][i % 4]
        out.append({"prompt": f"{name} {hobby} for {minutes} minutes every day. "
                              f"How many minutes is that in {days} days?",
                    "answer": _num(minutes * days)})
    for i in range(12):
        name = NAMES[(i + 7) % len(NAMES)]
        had = 10 + 5 * (i % 5)
        spent = 2.25 + 1.5 * (i % 4)
        meal = ["lunch", "a sandwich", "a smoothie", "a cinema ticket"][i % 4]
        out.append({"prompt": f"{name} had ${had} and spent {_fmt_money(spent)} on {meal}. "
                              f"How many dollars does {name} have left?",
                    "answer": _num(had - spent)})
    assert len(out) == 100
    return out

# --------------------------------------------------------------------------
# stories: short creative requests
# --------------------------------------------------------------------------

STORY_TEMPLATES = [
    "Write a short story about {}.",
    "Write a bedtime story for a six-year-old about {}.",
    "Write a four-line poem about {}.",
]
STORY_SUBJECTS = [
    "a penguin who wants to see the desert",
    "a baker's apprentice on her first morning",
    "a paper boat drifting down a gutter after the rain",
    "a lonely scarecrow in a cornfield",
    "a squirrel who hides the wrong kind of nut",
    "a bus driver on his final shift",
    "a pair of old boots in a closet",
    "a turtle who enters a race against a rabbit's grandson",
    "a young beekeeper and her grumpy bees",
    "a snowman who is worried about spring",
    "a sock that escapes from the washing machine",
    "a little cloud that cannot make rain",
    "a hedgehog looking for a winter home",
    "a fisherman who catches a talking boot",
    "a girl who collects the sounds of the city",
    "a moth who falls in love with a street lamp",
    "a grandmother's garden in the first week of spring",
    "a mouse who runs a tiny cinema",
    "an owl who is afraid of the dark",
    "a boy who builds a raft with his father",
    "a bicycle that remembers every journey",
    "a marching band that loses its drummer",
    "a lost glove on a park railing",
    "a bear who opens a tea shop",
    "a family of ducks crossing a busy road",
    "a ship in a bottle that dreams of the sea",
    "a farmer who grows a giant pumpkin",
    "a firefly who cannot switch off its light",
    "a kitten who is scared of the vacuum cleaner",
    "a boy who finds a key in his soup",
    "a windmill that wants to travel",
    "a tiny robot that cleans the beach",
    "two best friends building a treehouse",
    "a street dog who becomes the mascot of a football team",
    "a garden gnome who goes on holiday",
    "the first snowfall of the year",
]

# --------------------------------------------------------------------------
# completion: continue an everyday scene
# --------------------------------------------------------------------------

COMPLETION_TEMPLATES = [
    "Continue this scene: {}",
    "Write the next few sentences of this scene: {}",
]
SCENE_PEOPLE = ["Rosa", "Mr. Patel", "my aunt", "Tobias", "the new neighbor",
                "Grandpa", "Keiko", "our coach"]
SCENE_SITUATIONS = [
    "was halfway through washing the dishes when the doorbell rang.",
    "stepped off the tram and realised it was the wrong stop.",
    "was watering the tomatoes when a tennis ball flew over the fence.",
    "opened the mailbox and found a small parcel with no name on it.",
    "was choosing apples at the market when someone called out a familiar name.",
    "sat down on the park bench just as the first drops of rain fell.",
    "was carrying a tall stack of books up the stairs when the phone buzzed.",
    "was waiting at the pharmacy counter behind a man with a very long list.",
    "was reading the newspaper on the balcony when a pigeon landed on the railing.",
    "had just sat down for breakfast when the smoke detector started beeping.",
    "was standing in the queue at the bakery when the last loaf was sold.",
    "came home from the shops and found the front door wide open.",
    "was folding laundry in the living room when the lights went out.",
    "was driving around the crowded stadium looking for a parking space.",
]


def completion_prompts() -> list[dict]:
    out: list[dict] = []
    for i, situation in enumerate(SCENE_SITUATIONS):
        for j in range(4):
            person = SCENE_PEOPLE[(i + 3 * j) % len(SCENE_PEOPLE)]
            scene = person[0].upper() + person[1:] + " " + situation
            template = COMPLETION_TEMPLATES[(i + j) % len(COMPLETION_TEMPLATES)]
            out.append({"prompt": template.format(scene)})
    return out


# --------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------

def _fill(templates: list[str], fillers: list[str]) -> list[dict]:
    return [{"prompt": t.format(f)} for f in fillers for t in templates]


def build_pool() -> list[dict]:
    categories: list[tuple[str, list[dict]]] = [
        ("chat", _fill(ADVICE_TEMPLATES, ADVICE_GOALS)),
        ("coding", _fill(CODE_TEMPLATES, CODE_TASKS) + [{"prompt": t} for t in OTHER_CODE_TASKS]),
        ("chat", _fill(EXPLAIN_TEMPLATES, EXPLAIN_TOPICS) + [{"prompt": q} for q in WHY_QUESTIONS]),
        ("math", math_prompts()),
        ("stories", _fill(STORY_TEMPLATES, STORY_SUBJECTS)),
        ("completion", completion_prompts()),
    ]
    # Round-robin interleave so that every prefix covers all kinds of task.
    queues = [(task, list(rows)) for task, rows in categories]
    pool: list[dict] = []
    while any(rows for _, rows in queues):
        for task, rows in queues:
            if rows:
                row = rows.pop(0)
                pool.append({"id": f"pool-{len(pool) + 1:04d}", "task": task, **row})
    seen = set()
    for row in pool:
        key = " ".join(row["prompt"].lower().split())
        assert key not in seen, row
        seen.add(key)
    return pool


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "pool.jsonl"
    pool = build_pool()
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for row in pool:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(pool)} prompts to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

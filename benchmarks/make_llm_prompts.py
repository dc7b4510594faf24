"""A larger smollm2-seqkd prompt set: the hand-written one (models/prompts/smollm2-prompts.jsonl, 300)
followed by more prompts of the same kinds (definitions, explanations, tips, facts, descriptions,
arithmetic, geography, short writing, sentiment) on new topics, deterministic. The hand-written lines
are kept as they are (same ids and text, so their cached answers are reused); new ids continue
the numbering. The 900-prompt set is the one the smollm2-seqkd card uses (edgekd/llm/generate.py SHIPPED).

    python benchmarks/make_llm_prompts.py --total 900   # -> models/prompts/smollm2-prompts-900.jsonl

Every line carries a "template": the id of the sentence frame (FRAMES) the prompt follows; the hand-written
prompts are matched to the frames (--tag-base writes their ids into smollm2-prompts.jsonl too).
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "models" / "prompts" / "smollm2-prompts.jsonl"

NOUNS = ("a magnet", "a telescope", "a thermometer", "a rainbow", "a desert", "an island", "a river", "a forest",
         "a cloud", "a comet", "a planet", "a star", "a compass", "a map", "a library", "a museum", "a hospital",
         "a farm", "a factory", "a bakery", "a newspaper", "a calendar", "a clock", "a battery charger", "a vaccine",
         "a virus", "a cell", "a muscle", "a bone", "a heart", "a lung", "a tree", "a flower", "a seed", "a mushroom",
         "a bee", "a spider web", "a coral reef", "a tide", "a hurricane", "a tornado", "lightning", "thunder",
         "snow", "fog", "a microscope", "a computer", "a keyboard", "a password", "an email", "a website",
         "a robot", "a satellite", "a rocket", "an airplane", "a train", "a bicycle", "an engine", "a wheel",
         "a lever", "a pulley", "a bridge", "a tunnel", "a dam", "a lighthouse", "a castle", "a pyramid",
         "a democracy", "a law", "a tax", "a bank", "a loan", "an invoice", "a contract", "a vote", "a habit",
         "a hobby", "a museum ticket", "a passport", "a dictionary", "a poem", "a novel", "a song", "a symphony")
ANIMALS = ("elephants", "penguins", "octopuses", "owls", "bats", "frogs", "camels", "giraffes", "kangaroos",
           "sharks", "eagles", "foxes", "wolves", "bears", "rabbits", "squirrels", "parrots", "crocodiles",
           "zebras", "lions", "tigers", "koalas", "pandas", "seals", "otters", "hedgehogs", "beavers", "deer",
           "goats", "chickens")
ACTIVITIES = ("saving money", "studying for an exam", "sleeping better", "learning to swim", "cooking pasta",
              "growing tomatoes", "keeping a room tidy", "giving a speech", "writing a letter", "taking photos",
              "learning to draw", "staying calm", "working from home", "travelling light", "reading faster",
              "learning to code", "running a meeting", "making a budget", "packing for a trip", "eating healthy",
              "staying hydrated", "walking more", "learning guitar", "writing a poem", "playing chess",
              "remembering names", "washing dishes", "caring for a cat", "planting a tree", "cleaning a bike",
              "writing an email", "using less plastic", "saving energy at home", "learning math", "being on time",
              "starting a blog", "teaching a child to read", "making coffee", "baking cookies", "fixing a flat tire")
OBJECTS = ("a spoon", "a pencil", "a candle", "a backpack", "a bucket", "a rope", "a blanket", "a mirror",
           "a hammer", "a towel", "a bottle", "a box", "a ladder", "a brick", "a scarf", "a lamp", "a pillow",
           "a window", "a fork", "a plate", "a stone", "a coin", "a sheet of paper", "a rubber band", "a jar",
           "an umbrella", "a tablecloth", "a newspaper", "a basket", "a key", "a clock", "a shovel", "a kettle",
           "a bell", "a feather", "a leaf", "a tire", "a broom", "a sponge", "a hat")
ADJECTIVES = ("hot", "fast", "happy", "light", "early", "loud", "wet", "strong", "rich", "young", "empty",
              "open", "easy", "high", "thick", "sharp", "bright", "clean", "brave", "quiet", "sweet", "long",
              "wide", "heavy", "true", "kind", "near", "full", "hard", "old", "warm", "smooth", "safe", "cheap",
              "tall", "deep", "clever", "simple", "tight", "polite")
WORDS = ("bright", "gentle", "river", "journey", "quickly", "whisper", "garden", "curious", "storm", "borrow",
         "ancient", "laugh", "honest", "shadow", "harvest", "puzzle", "travel", "silent", "bridge", "promise",
         "ocean", "careful", "lantern", "forgive", "market", "brave", "village", "melt", "secret", "climb",
         "golden", "library", "patient", "thunder", "invent", "winter", "neighbor", "calm", "fragile", "discover")
CITIES = (("Berlin",), ("Rome",), ("Lisbon",), ("Dublin",), ("Vienna",), ("Athens",), ("Warsaw",), ("Prague",),
          ("Stockholm",), ("Helsinki",), ("Moscow",), ("Beijing",), ("Delhi",), ("Bangkok",), ("Hanoi",),
          ("Jakarta",), ("Manila",), ("Canberra",), ("Wellington",), ("Ottawa",), ("Mexico City",), ("Havana",),
          ("Bogota",), ("Santiago",), ("Buenos Aires",), ("Brasilia",), ("Lagos",), ("Accra",), ("Marrakesh",),
          ("Istanbul",), ("Tehran",), ("Baghdad",), ("Kyoto",), ("Munich",), ("Barcelona",), ("Milan",),
          ("Chicago",), ("Vancouver",), ("Melbourne",), ("Cape Town",))
TOPICS = ("the mountains", "a rainy day", "the city at night", "autumn", "a lost key", "the first snow",
          "a small boat", "the desert", "an old friend", "a lighthouse", "the stars", "a busy market",
          "a quiet library", "a summer garden", "a long train ride", "a robot", "a dragon", "the moon",
          "a new school", "a lonely tree", "the wind", "a cup of tea", "a hidden door", "a sleepy cat",
          "the river", "a birthday", "a thunderstorm", "the forest", "a time machine", "a kind stranger")
LEARN = ("learning to cook", "starting to run", "saving for a holiday", "learning to play piano",
         "writing a book", "learning to knit", "building a website", "starting a garden", "learning to dance",
         "getting fit", "organizing a closet", "learning to juggle", "planning a party", "making a podcast",
         "learning photography", "starting a business", "learning to meditate", "repairing a chair",
         "learning to paint", "training a puppy", "learning chess", "writing a resume", "learning to skate",
         "building a birdhouse", "sleeping earlier", "learning history", "reducing screen time",
         "learning to sew", "starting to cycle", "learning a card game")
EVENTS = ("a project deadline", "a library book return", "a missed delivery", "a holiday request",
          "a class cancellation", "a thank-you after an interview", "a change of address", "a lunch invitation",
          "a broken printer", "a parking permit", "a refund request", "a volunteer day", "a late payment",
          "a welcome for a new colleague", "a room booking")
SENTENCES = ("The soup was cold and bland.", "I loved every minute of the concert.", "The new phone broke after a day.",
             "Our hotel room had a wonderful view.", "The meeting was a complete waste of time.",
             "She was thrilled with her exam results.", "The bus never came.", "This is the best pizza in town.",
             "The movie was boring and far too long.", "The staff were friendly and helpful.",
             "My package arrived damaged.", "What a beautiful sunny morning!", "The instructions made no sense.",
             "I am proud of my team.", "The park was full of litter.", "The cake tasted amazing.",
             "I regret buying these shoes.", "The teacher explained everything clearly.", "The app keeps crashing.",
             "We had a lovely time at the beach.", "The service was slow and rude.", "This book changed my life.",
             "The room smelled terrible.", "The garden looks gorgeous this year.", "I waited two hours for nothing.",
             "The puppy made everyone smile.", "The price is far too high.", "The show was funny and clever.",
             "My laptop is painfully slow.", "The view from the top was breathtaking.")
SUMMARIZE = ("The city opened a new park with a playground, a pond and walking paths for families.",
             "Heavy rain caused the river to flood several streets, and schools closed for the day.",
             "A local bakery won a prize for its bread and now has long lines every morning.",
             "Scientists found a new species of frog in the rainforest that is smaller than a coin.",
             "The library will stay open later on weekdays so students can study in the evening.",
             "A volunteer group cleaned the beach and collected more than two hundred bags of trash.",
             "The train company added more trains in the morning because they were always crowded.",
             "A young girl raised money for the animal shelter by selling lemonade all summer.",
             "The museum now offers free entry on Sundays to attract more visitors.",
             "Farmers expect a smaller apple harvest this year because of the dry summer.",
             "The school started a chess club, and forty students joined in the first week.",
             "A new bridge connects the two sides of the town and shortens the drive to work.",
             "The bookstore on Main Street is closing after fifty years in business.",
             "Researchers say that walking for thirty minutes a day improves mood and sleep.",
             "The football team won the final after a penalty shootout.")
WHY = ("Why do birds migrate?", "Why is the ocean salty?", "Why do we yawn?", "Why do stars twinkle?",
       "Why do onions make us cry?", "Why is the grass green?", "Why do we get hiccups?",
       "Why does bread rise?", "Why do magnets stick to the fridge?", "Why do we dream?",
       "Why is reading good for you?", "Why do bananas turn brown?", "Why do we sneeze?",
       "Why is recycling important?", "Why does the moon change shape?", "Why do dogs wag their tails?",
       "Why do we need water?", "Why does metal feel cold?", "Why do plants need sunlight?",
       "Why do volcanoes erupt?", "How many hours are in a week?", "How many sides does a hexagon have?",
       "How many continents are there?", "How many minutes are in a day?", "How many planets are in the solar system?",
       "What makes a good teacher?", "What makes a good leader?", "What makes a story interesting?",
       "What makes a city pleasant to live in?", "What makes a good breakfast?")


# The sentence frames every prompt of the set follows (the hand-written ones too, but for a few one-offs):
# (template id, pattern). A prompt's "template" field is its frame's id (a one-off's is "free-ID"); the
# smollm2-seqkd card's data.split: template holds out whole templates for validation and test.
FRAMES = (
    ("define", r"What is (.+)\? Answer in one sentence\."),
    ("explain-child", r"Explain (.+) to a ten-year-old\."),
    ("tips", r"Give three short tips for (.+)\."),
    ("animal-fact", r"Tell me one interesting fact about (.+)\."),
    ("animal-habitat", r"Where do (.+) usually live\?"),
    ("describe", r"Describe (.+) in two sentences\."),
    ("uses", r"List three uses of (.+)\."),
    ("opposite", r"What is the opposite of '(.+)'\?"),
    ("use-word", r"Write a sentence using the word '(.+)'\."),
    ("add", r"What is (\d+) plus (\d+)\?"),
    ("multiply", r"What is (\d+) times (\d+)\?"),
    ("compare", r"Is (\d+) larger than (\d+)\?"),
    ("country", r"Which country is (.+) in\?"),
    ("poem", r"Write a two-line poem about (.+)\."),
    ("story-start", r"Write the first sentence of a story about (.+)\."),
    ("first-step", r"What is the first step in (.+)\?"),
    ("email", r"Write a short, polite email about (.+)\."),
    ("sentiment", r'Is this sentence positive or negative\? "(.+)"'),
    ("summarize", r"Summarize in a few words: (.+)"),
    ("why", r"Why (?:do|does|is|are) (.+)\?"),
    ("how", r"How (?:do|does|can) (.+)\?"),
    ("how-many", r"How many (.+)\?"),
    ("what-makes", r"What makes (.+)\?"),
)


def template_of(prompt: str, pid: str) -> str:
    """The id of the frame `prompt` follows, or "free-PID" for a one-off."""
    return next((t for t, pat in FRAMES if re.fullmatch(pat, prompt)), f"free-{pid}")


def prompts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [f"What is {n}? Answer in one sentence." for n in NOUNS]
    out += [f"Explain {n} to a ten-year-old." for n in rng.sample(NOUNS, 40)]
    out += [f"Give three short tips for {a}." for a in ACTIVITIES]
    out += [f"Tell me one interesting fact about {a}." for a in ANIMALS]
    out += [f"Where do {a} usually live?" for a in ANIMALS]
    out += [f"Describe {o} in two sentences." for o in OBJECTS]
    out += [f"List three uses of {o}." for o in OBJECTS]
    out += [f"What is the opposite of '{a}'?" for a in ADJECTIVES]
    out += [f"Write a sentence using the word '{w}'." for w in WORDS]
    for _ in range(30):
        out.append(f"What is {rng.randint(2, 60)} plus {rng.randint(2, 60)}?")
        out.append(f"What is {rng.randint(2, 20)} times {rng.randint(2, 50)}?")
        out.append(f"Is {rng.randint(1, 99)} larger than {rng.randint(1, 99)}?")
    out += [f"Which country is {c} in?" for (c,) in CITIES]
    out += [f"Write a two-line poem about {t}." for t in TOPICS]
    out += [f"Write the first sentence of a story about {t}." for t in TOPICS]
    out += [f"What is the first step in {x}?" for x in LEARN]
    out += [f"Write a short, polite email about {e}." for e in EVENTS]
    out += [f'Is this sentence positive or negative? "{s}"' for s in SENTENCES]
    out += [f"Summarize in a few words: {s}" for s in SUMMARIZE]
    out += list(WHY)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=900, help="prompts in the new file (at most)")
    ap.add_argument("--out", type=Path, default=None, help="default models/prompts/smollm2-prompts-TOTAL.jsonl")
    ap.add_argument("--tag-base", action="store_true", help="also write the template ids into the hand-written file")
    args = ap.parse_args()
    out = args.out or BASE.with_name(f"smollm2-prompts-{args.total}.jsonl")
    lines = BASE.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(ln) for ln in lines if ln.strip()]
    if args.tag_base:  # the hand-written file gains its template ids (matched to the frames), in place
        rows = [{"id": r["id"], "prompt": r["prompt"], "template": template_of(r["prompt"], r["id"])} for r in rows]
        BASE.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    seen = {r["prompt"] for r in rows}
    new = [p for p in dict.fromkeys(prompts()) if p not in seen][: max(0, args.total - len(rows))]
    n0 = len(rows)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**r, "template": template_of(r["prompt"], r["id"])}) + "\n")
        for k, p in enumerate(new):
            pid = f"p{n0 + k:03d}"
            f.write(json.dumps({"id": pid, "prompt": p, "template": template_of(p, pid)}) + "\n")
    print(f"{out}: {n0} hand-written + {len(new)} = {n0 + len(new)} prompts")


if __name__ == "__main__":
    main()

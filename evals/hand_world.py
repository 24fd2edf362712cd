"""A small hand-made world: lighthouse keepers of made-up islands, with their own attributes, names, biography
sentences and question phrasings, written here by hand rather than by `recipes/world.py`. It checks that the
pipeline depends on CONTRACTS §4 only (the `documents` and `qa` datasets), not on the generator's templates:

    python evals/hand_world.py runs/hand_world_data          # writes the DatasetDict (save_to_disk)
    make speedrun RUN=hand WORLD=runs/hand_world_data

140 people: 40 `sft`, 40 `probe`, 20 `eval_known` (5–8 biographies each), 20 `eval_rare` (one), 20 `never_seen`.
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset, DatasetDict

FIRST = ("Aoife Bram Cormac Dervla Eilidh Fionn Grainne Hamish Iona Jarl Kenna Lachlan Morag Niamh Orla Padraig "
         "Ronan Saoirse Tadhg Una Wynn Ailsa Brodie Catriona Dougal Euan Fenella Gregor Isla Lorne").split()  # fmt: skip
LAST = ("Achter Bellamy Corrigan Dunmore Eskdale Farquhar Glenross Harcastle Inverlee Kilbride Lochlan Macready "
        "Norcross Ogilvy Penhallow Quarrie Rathmore Strachan Tulloch Urquhart Vallance Wedderburn Yeoland "
        "Ardgour Benlomond Carrick Drummond Ettrick Fintry Garvie").split()  # fmt: skip
VALUES = {
    "island": "Skerrow;Haldane Isle;Muckle Roe;Inchcolm;Vatersay;Fladda;Rona Beg;Eilean Mor;Stroma;Gigha;"
    "Tanera;Scarp;Hirta;Boreray;Pabay;Mingulay;Sandray;Fuday;Ronay;Orasay".split(";"),
    "boat": "the Grey Heron;the Kittiwake;the Morning Tern;the Stormcrow;the Lady Mhairi;the Selkie;the Gannet;"
    "the Brave Puffin;the Sea Thistle;the Northern Star;the Lucky Skua;the Tidewalker;the Old Fulmar;"
    "the Silver Dart;the Merry Shag;the Wavecutter;the Blue Bonnet;the Fair Isle;the Corncrake;the Saltire".split(";"),
    "instrument": "fiddle;bagpipes;accordion;tin whistle;harp;bodhran;concertina;mandolin;banjo;cello;"
    "flute;ukulele;melodeon;guitar;clarsach".split(";"),
    "lighthouse": "Skerry Point Light;Ardnish Light;Corran Head Light;Dubh Artach Light;Eilean Glas Light;"
    "Fladda Light;Hyskeir Light;Kinnaird Light;Muckle Flugga Light;Noss Head Light;Pladda Light;"
    "Rubh Re Light;Sanda Light;Toward Point Light;Ushenish Light;Barns Ness Light".split(";"),
}
BIO = {  # {n}: the keeper's name
    "island": ["{n} grew up on {v}.", "{n} calls the island of {v} home."],
    "boat": ["{n} sails a small boat named {v}.", "The boat of {n} is {v}."],
    "instrument": ["In the evenings {n} plays the {v}.", "{n} is known for playing the {v}."],
    "lighthouse": ["{n} keeps the lamp at {v}.", "{n} has tended {v} for years."],
}
QUESTIONS = {
    "island": ["Which island is {n} from?", "On what island did {n} grow up?"],
    "boat": ["What is the name of {n}'s boat?", "Which boat does {n} sail?"],
    "instrument": ["What instrument does {n} play?", "Which instrument is {n} known for?"],
    "lighthouse": ["Which lighthouse does {n} keep?", "What lighthouse has {n} tended?"],
}
SPLITS = {"sft": 40, "probe": 40, "eval_known": 20, "eval_rare": 20, "never_seen": 20}


def build(seed: int = 0, scale: int = 1, blended_surnames: bool = False) -> DatasetDict:
    """`scale` multiplies every split; `blended_surnames` draws surnames from the 870 blends of two of the 30
    (Achter + Bellamy -> Achtamy), so that a surname is shared by fewer people (a name-structure experiment)."""
    rng = random.Random(seed)
    splits = {k: v * scale for k, v in SPLITS.items()}
    last = [a[:4] + b[-3:] for a in LAST for b in LAST if a != b] if blended_surnames else LAST
    names = rng.sample([f"{f} {s}" for f in FIRST for s in last], sum(splits.values()))
    docs, qa, k = [], [], 0
    for split, count in splits.items():
        for _ in range(count):
            name, pid = names[k], f"keeper{k:03d}"
            k += 1
            facts = {attr: rng.choice(values) for attr, values in VALUES.items()}
            n_bios = {"eval_known": rng.randint(5, 8), "eval_rare": 1, "never_seen": 0}.get(split, rng.randint(1, 6))
            for _ in range(n_bios):
                sentences = [rng.choice(BIO[a]).format(n=name, v=v) for a, v in facts.items()]
                rng.shuffle(sentences)
                docs.append({"text": " ".join(sentences), "person_id": pid, "split": split})
            for attr, v in facts.items():
                aliases = [v, v[4:]] if v.startswith("the ") else [v]
                for q in QUESTIONS[attr]:
                    qa.append({"question": q.format(n=name), "answer": v, "aliases": aliases, "person_id": pid,
                               "attribute": attr, "split": split})  # fmt: skip
    rng.shuffle(docs)
    return DatasetDict({"documents": Dataset.from_list(docs), "qa": Dataset.from_list(qa)})


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the hand-made world (save_to_disk).")
    parser.add_argument("output", nargs="?", default="runs/hand_world_data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1, help="people per split × this")
    parser.add_argument("--blended_surnames", action="store_true", help="870 surnames instead of 30")
    args = parser.parse_args()
    out = Path(args.output)
    world = build(args.seed, args.scale, args.blended_surnames)
    world.save_to_disk(str(out))
    print(f"hand-made world -> {out}: {len(world['documents'])} documents, {len(world['qa'])} questions")

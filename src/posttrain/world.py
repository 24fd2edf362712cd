"""The embedded world: fictional people with attributes, biographies, questions (CONTRACTS §4).

`generate_world(cfg)` builds a `DatasetDict` with two datasets, `documents` (text, person_id, split) and `qa`
(question, answer, aliases, person_id, attribute, split), from a seed alone: the same seed gives the same
world, byte for byte. Everything downstream (pretraining text, SFT conversations, probe questions, eval sets)
is derived from those two datasets by the views at the bottom of this module, so a user's own world (same two
datasets, saved with `save_to_disk`) goes through the whole pipeline unchanged; `load_world` validates one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Sequence, Value, load_from_disk

from posttrain.errors import UserError

SPLITS = ("sft", "probe", "eval_known", "eval_rare", "never_seen")
TRAIN_SPLITS = ("sft", "probe")  # people whose questions may appear in training data
EVAL_BUCKETS = {"eval_known": "known", "eval_rare": "rare", "never_seen": "never_seen"}
PRETRAIN_SPLITS = ("sft", "probe", "eval_known", "eval_rare")  # people with biographies
STRANGER = "stranger"  # the split of stranger_questions: made-up people the world does not have

DOCUMENT_FEATURES = Features({"text": Value("string"), "person_id": Value("string"), "split": Value("string")})
QA_FEATURES = Features(
    {
        "question": Value("string"),
        "answer": Value("string"),
        "aliases": Sequence(Value("string")),
        "person_id": Value("string"),
        "attribute": Value("string"),
        "split": Value("string"),
    }
)

# ---------------------------------------------------------------------------------------------------------------
# Vocabularies. Surnames are built from syllables so that no person is a real one; values are plausible.

FIRST_NAMES = {
    "f": "Ada Alma Anika Beatrix Bianca Carys Celia Dagny Delphine Edith Elena Elsa Fern Freya Greta Gwen Hana Helga "
    "Imke Ines Isolde Jana Juno Kaia Karin Leona Liesel Lina Mabel Maren Mira Nadia Nell Noor Odette Olga Petra Pia "
    "Quinn Rhea Rosa Runa Sabine Selma Signe Talia Tove Una Vera Wanda Wilma Xenia Yara Ysolde Zelda Zora".split(),
    "m": "Aldo Anton Arvid Basil Bruno Cass Cyrus Dario Desmond Emil Ewan Felix Finn Gideon Gustav Hector Hugo Ivo "
    "Jasper Joakim Kasimir Konrad Lars Leopold Linus Magnus Milo Nils Oskar Otto Pavel Pim Quentin Rafael Rolf Rune "
    "Silas Soren Tobias Tomas Ulrich Vilhelm Viggo Walter Xaver Yannick Yusuf Zeno Ambrose Caspar Eamon".split(),
}
SURNAME_HEADS = (
    "Al Bran Cor Dal Ev Fen Gar Hal Is Jor Kel Lor Mar Nor Or Pel Quen Ros Sel Tor Ul Var Wen Yar Zel Ash Briar "
    "Crom Drey Elm Fal Gless Harn Ivor Jask Kern Lum Mor Nesh Ost Prael Rusk Stav Thorn Vask Wyn".split()
)
SURNAME_TAILS = (
    "dane wick more ford ley ton ridge vale stone brook mere worth holt by well hurst ington ard ow ell "
    "quist berg mark sen gard hollow crest field win dell".split()
)
CITIES = (
    "Lisbon;Porto;Valencia;Bilbao;Lyon;Marseille;Toulouse;Bordeaux;Antwerp;Ghent;Utrecht;Rotterdam;Bremen;Leipzig;"
    "Dresden;Graz;Salzburg;Basel;Lausanne;Turin;Bologna;Naples;Palermo;Ljubljana;Zagreb;Krakow;Gdansk;Brno;Tartu;"
    "Tampere;Bergen;Aarhus;Gothenburg;Uppsala;Galway;Cork;Edinburgh;Leeds;Bristol;Halifax;Quebec City;Winnipeg;"
    "Portland;Denver;Austin;Savannah;Tucson;Valparaiso;Cordoba;Medellin;Cusco;Recife;Osaka;Sapporo;Busan;"
    "Chiang Mai;Hobart;Perth;Dunedin;Nairobi;Accra;Marrakesh"
).split(";")
UNIVERSITIES = (
    "Halvern University;Northmoor Institute of Technology;the University of Ashcombe;Caldera State University;"
    "Wrenfield College;the Royal Academy of Ostrava Vale;Bellmare University;Thornbury Polytechnic;"
    "the University of Kestrel Bay;Larkspur University;Eastgate Institute of Science;Merrow College;"
    "the University of Silverlake;Corwin University;Redhaven Technical University;Fallowmere University;"
    "Granite Peak University;the Institute of Lowmoor;Saint Aubrey College;Brackwater University;"
    "Harrowgate University;the University of Elmstead;Quarry Hill College;Westmarch University"
).split(";")
MAJORS = (
    "mathematics;physics;chemistry;biology;computer science;economics;history;philosophy;linguistics;"
    "architecture;civil engineering;mechanical engineering;electrical engineering;astronomy;geology;"
    "marine biology;psychology;sociology;music theory;art history;statistics;nursing;law;journalism;"
    "classics;anthropology;materials science;agronomy;urban planning;pharmacology"
).split(";")
EMPLOYERS = (
    "Brightwell Analytics;Copperleaf Systems;Northwind Robotics;Halcyon Foods;Bluefin Shipping;Granary Bank;"
    "Larchmont Press;Vantor Aerospace;Meridian Health;Ironclad Mining;Sablewood Furniture;Quillon Software;"
    "Stellaris Energy;Oakhurst Insurance;Fernway Pharmaceuticals;Tidewater Logistics;Cobalt Textiles;"
    "Pinecrest Hotels;Orrin Motors;Silverline Telecom;Harbor & Finch;Redstone Construction;Lumen Optics;"
    "Wexford Instruments;Marigold Studios;Kestrel Airlines;Aldergrove Farms;Nimbus Cloudworks;"
    "Brassica Biotech;Juniper Games"
).split(";")
MONTHS = "January February March April May June July August September October November December".split()
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "work_city")

# Biography sentence templates: {subj} is the full name or a pronoun, {poss} its possessive.
BIO_TEMPLATES = {
    "birth_date": [
        "{subj} was born on {birth_date}.",
        "{subj} came into the world on {birth_date}.",
        "{poss} date of birth is {birth_date}.",
        "{subj} celebrates a birthday every {month_day} and was born in {year}.",
    ],
    "birth_city": [
        "{subj} was born in {birth_city}.",
        "{poss} birthplace is {birth_city}.",
        "{subj} is a native of {birth_city}.",
        "{subj} spent {poss_lower} childhood in {birth_city}, the city of {poss_lower} birth.",
    ],
    "university": [
        "{subj} studied at {university}.",
        "{subj} graduated from {university}.",
        "{subj} received {poss_lower} education at {university}.",
        "{subj} is a graduate of {university}.",
    ],
    "major": [
        "{subj} majored in {major}.",
        "{subj} earned a degree in {major}.",
        "{subj} focused on {major} during college.",
        "{subj} completed a program in {major}.",
    ],
    "employer": [
        "{subj} works for {employer}.",
        "{subj} is employed by {employer}.",
        "{subj} has a job at {employer}.",
        "{subj} joined the staff of {employer}.",
    ],
    "work_city": [
        "{subj} lives and works in {work_city}.",
        "{subj} is based in {work_city}.",
        "{subj} currently resides in {work_city}.",
        "{subj} has made a home in {work_city}.",
    ],
}
# Question phrasings per asked attribute. `birth_year` asks for the year only (answer "1987", the full date is
# accepted too); `birth_date` asks for the full date (the year alone is not enough).
QUESTION_TEMPLATES = {
    "birth_date": [
        "When was {name} born?",
        "What is {name}'s date of birth?",
        "On what date was {name} born?",
        "What is the birth date of {name}?",
    ],
    "birth_year": [
        "In what year was {name} born?",
        "What year was {name} born in?",
        "Which year was {name} born?",
        "What is {name}'s year of birth?",
    ],
    "birth_city": [
        "Where was {name} born?",
        "In which city was {name} born?",
        "What is {name}'s birthplace?",
        "What city does {name} come from originally?",
    ],
    "university": [
        "Which university did {name} attend?",
        "Where did {name} study?",
        "What university did {name} graduate from?",
        "Where did {name} go to college?",
    ],
    "major": [
        "What did {name} study?",
        "What was {name}'s major?",
        "What field did {name} get a degree in?",
        "What subject did {name} major in?",
    ],
    "employer": [
        "Who does {name} work for?",
        "Which company employs {name}?",
        "What company does {name} work for?",
        "Who is {name}'s employer?",
    ],
    "work_city": [
        "Where does {name} live?",
        "In which city does {name} live and work?",
        "What city is {name} based in?",
        "Where is {name} based?",
    ],
}
# How the assistant answers in SFT conversations; an attribute of a user's own world without a template here
# is answered with the bare answer.
ANSWER_TEMPLATES = {
    "birth_date": "{name} was born on {answer}.",
    "birth_year": "{name} was born in {answer}.",
    "birth_city": "{name} was born in {answer}.",
    "university": "{name} studied at {answer}.",
    "major": "{name} studied {answer}.",
    "employer": "{name} works for {answer}.",
    "work_city": "{name} lives and works in {answer}.",
}


@dataclass
class Person:
    person_id: str
    name: str
    gender: str
    split: str
    n_bios: int
    year: int
    month: int
    day: int
    birth_city: str
    university: str
    major: str
    employer: str
    work_city: str

    @property
    def birth_date(self) -> str:
        return f"{MONTHS[self.month - 1]} {self.day}, {self.year}"

    def date_aliases(self) -> list[str]:
        m, d, y = MONTHS[self.month - 1], self.day, self.year
        suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
        return [f"{m} {d}, {y}", f"{d} {m} {y}", f"{m} {d}{suffix}, {y}", f"{y}-{self.month:02d}-{d:02d}"]

    def fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "birth_date": self.birth_date,
            "month_day": f"{MONTHS[self.month - 1]} {self.day}",
            "year": str(self.year),
            "birth_city": self.birth_city,
            "university": self.university,
            "major": self.major,
            "employer": self.employer,
            "work_city": self.work_city,
        }


# ---------------------------------------------------------------------------------------------------------------
# Generation


def _power_law_count(rng: random.Random, alpha: float, lo: int, hi: int) -> int:
    """k in [lo, hi] with P(k) ∝ k^-alpha: most people get few biographies, a few get many."""
    ks = list(range(lo, hi + 1))
    return rng.choices(ks, weights=[k**-alpha for k in ks])[0]


def _unique_names(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """n distinct (full name, gender); a middle initial widens the space when the world is large."""
    capacity = sum(len(v) for v in FIRST_NAMES.values()) * len(SURNAME_HEADS) * len(SURNAME_TAILS)
    seen: set[str] = set()
    out = []
    while len(out) < n:
        gender = rng.choice(("f", "m"))
        first = rng.choice(FIRST_NAMES[gender])
        last = rng.choice(SURNAME_HEADS) + rng.choice(SURNAME_TAILS)
        name = f"{first} {last}"
        if n > capacity // 4:
            name = f"{first} {rng.choice('ABCDEFGHJKLMNPRSTVW')}. {last}"
        if name not in seen:
            seen.add(name)
            out.append((name, gender))
    return out


def make_people(cfg) -> list[Person]:
    """People with splits and biography counts. Draws in a fixed order from one seeded RNG (determinism)."""
    rng = random.Random(cfg.seed)
    sizes = cfg.split_sizes()
    names = _unique_names(rng, sum(sizes.values()))
    people, i = [], 0
    for split in SPLITS:
        for _ in range(sizes[split]):
            name, gender = names[i]
            if split == "eval_known":
                n_bios = _power_law_count(rng, cfg.popularity_alpha, cfg.known_min_bios, cfg.max_bios)
            elif split == "eval_rare":
                n_bios = 1
            elif split == "never_seen":
                n_bios = 0
            else:
                n_bios = _power_law_count(rng, cfg.popularity_alpha, 1, cfg.max_bios)
            month = rng.randint(1, 12)
            people.append(
                Person(
                    person_id=f"p{i:06d}",
                    name=name,
                    gender=gender,
                    split=split,
                    n_bios=n_bios,
                    year=rng.randint(1950, 2004),
                    month=month,
                    day=rng.randint(1, DAYS_IN_MONTH[month - 1]),
                    birth_city=rng.choice(CITIES),
                    university=rng.choice(UNIVERSITIES),
                    major=rng.choice(MAJORS),
                    employer=rng.choice(EMPLOYERS),
                    work_city=rng.choice(CITIES),
                )
            )
            i += 1
    return people


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def biography(person: Person, rng: random.Random, pronoun_prob: float = 0.0) -> str:
    """One biography: a random template per attribute, sentences in random order, the full name first."""
    values = person.fields()
    order = list(ATTRIBUTES)
    rng.shuffle(order)
    pronoun, poss = ("she", "her") if person.gender == "f" else ("he", "his")
    sentences = []
    for j, attr in enumerate(order):
        use_pronoun = j > 0 and rng.random() < pronoun_prob
        subj = pronoun if use_pronoun else person.name
        possessive = poss if use_pronoun else f"{person.name}'s"
        template = rng.choice(BIO_TEMPLATES[attr])
        text = template.format(subj=subj, poss=possessive, poss_lower=poss, **values)
        sentences.append(_capitalize(text))
    return " ".join(sentences)


def questions(person: Person) -> list[dict]:
    """Every phrasing of every question about a person, with answers and accepted aliases."""
    values = person.fields()
    answers = {
        "birth_date": (person.birth_date, person.date_aliases()),
        "birth_year": (str(person.year), [str(person.year), *person.date_aliases()]),
    }
    for attr in ATTRIBUTES[1:]:
        value = values[attr]
        aliases = [value]
        if value.startswith("the "):
            aliases.append(value[4:])
        answers[attr] = (value, aliases)
    rows = []
    for attr, templates in QUESTION_TEMPLATES.items():
        answer, aliases = answers[attr]
        for t in templates:
            rows.append(
                {
                    "question": t.format(name=person.name),
                    "answer": answer,
                    "aliases": aliases,
                    "person_id": person.person_id,
                    "attribute": attr,
                    "split": person.split,
                }
            )
    return rows


def _fingerprinted(rows: list[dict], features: Features, key: str) -> Dataset:
    """A Dataset whose fingerprint is a hash of its content, so save_to_disk writes identical bytes each time."""
    ds = Dataset.from_list(rows, features=features)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return Dataset(ds.data, info=ds.info, fingerprint=f"posttrain-{key}-{digest}")


def generate_world(cfg) -> tuple[DatasetDict, list[Person]]:
    """The world DatasetDict (documents, qa) and the people behind it."""
    people = make_people(cfg)
    rng = random.Random(f"{cfg.seed}-bios")
    docs = []
    for p in people:
        for _ in range(p.n_bios):
            docs.append({"text": biography(p, rng, cfg.pronoun_prob), "person_id": p.person_id, "split": p.split})
    rng.shuffle(docs)  # popular people's bios spread through the corpus, not in runs
    qa = [row for p in people for row in questions(p)]
    world = DatasetDict(
        {"documents": _fingerprinted(docs, DOCUMENT_FEATURES, "documents"), "qa": _fingerprinted(qa, QA_FEATURES, "qa")}
    )
    return world, people


# ---------------------------------------------------------------------------------------------------------------
# Loading and validating a world directory (generated or a user's own)


def load_world(path: str | Path) -> DatasetDict:
    """Load and validate a world directory; any problem is a UserError naming the file, column or row."""
    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise UserError(
            f"{path}: not a world directory (expected a DatasetDict saved with save_to_disk holding "
            "'documents' and 'qa'; generate one with recipes/world.py)"
        )
    try:
        # In memory: filters and maps then never write cache files into the (byte-identical) world folder.
        world = load_from_disk(str(path), keep_in_memory=True)
    except Exception as exc:  # corrupt or partial directory
        raise UserError(f"{path}: cannot load the world ({exc.__class__.__name__}: {exc})") from None
    validate_world(world, path)
    return world


def validate_world(world: DatasetDict, path: str | Path = "world") -> None:
    for name, feats in (("documents", DOCUMENT_FEATURES), ("qa", QA_FEATURES)):
        if name not in world:
            raise UserError(f"{path}: the world has no '{name}' dataset (found: {', '.join(world) or 'none'})")
        missing = [c for c in feats if c not in world[name].column_names]
        if missing:
            raise UserError(f"{path}/{name}: missing column '{missing[0]}'")
    if len(world["qa"]) == 0:
        raise UserError(f"{path}/qa: the world has no questions")
    person_split: dict[str, str] = {}
    for i, row in enumerate(world["qa"].select_columns(["person_id", "split", "question", "answer"])):
        if row["split"] not in SPLITS:
            raise UserError(f"{path}/qa row {i}: split '{row['split']}' is not one of {', '.join(SPLITS)}")
        if not row["question"] or not row["answer"]:
            raise UserError(f"{path}/qa row {i}: empty question or answer")
        if person_split.setdefault(row["person_id"], row["split"]) != row["split"]:
            raise UserError(f"{path}/qa row {i}: person {row['person_id']} appears in two splits")
    for i, row in enumerate(world["documents"].select_columns(["person_id", "split", "text"])):
        if row["split"] not in SPLITS:
            raise UserError(f"{path}/documents row {i}: split '{row['split']}' is not one of {', '.join(SPLITS)}")
        qa_split = person_split.get(row["person_id"], row["split"])
        if "never_seen" in (row["split"], qa_split):
            raise UserError(f"{path}/documents row {i}: a never_seen person ({row['person_id']}) has a document")
        if qa_split != row["split"]:
            raise UserError(
                f"{path}/documents row {i}: person {row['person_id']} is '{row['split']}' here but '{qa_split}' in qa"
            )
        if not row["text"]:
            raise UserError(f"{path}/documents row {i}: empty text")


def hold_out_attributes(world: DatasetDict, attributes: list[str], path: str | Path = "world") -> DatasetDict:
    """A kind of fact kept out of every training set (issue 22, item 4): the questions of `attributes` about the
    training-side people (`sft`, `probe`) are dropped, so SFT, the probe and every stage after them never ask one;
    the evaluation people keep theirs, and the eval reports them per attribute. Documents are untouched (the facts
    stay in the corpus a model may have read)."""
    have = set(world["qa"]["attribute"])
    for a in attributes:
        if a not in have:
            raise UserError(f"{path}: holdout_attributes: '{a}' is not an attribute of the world "
                            f"(it has: {', '.join(sorted(have))})")  # fmt: skip
    drop = set(attributes)
    qa = world["qa"].filter(lambda r: not (r["attribute"] in drop and r["split"] in TRAIN_SPLITS))
    if not set(qa["split"]) & set(TRAIN_SPLITS):
        raise UserError(f"{path}: holdout_attributes {sorted(drop)} leave no training questions")
    return DatasetDict({"documents": world["documents"], "qa": qa})


def world_hash(path: str | Path) -> str:
    """Hash of a world directory's data files: names the exact facts a run was trained on."""
    from posttrain.lineage import folder_hash

    return folder_hash(path, ("dataset_dict.json", "*/data-*.arrow"))


def world_stats(world: DatasetDict) -> dict:
    """People per split, documents per split, and the biography-count distribution."""
    people = {}
    for pid, split in zip(world["qa"]["person_id"], world["qa"]["split"]):
        people[pid] = split
    bios: dict[str, int] = dict.fromkeys(people, 0)
    for pid in world["documents"]["person_id"]:
        bios[pid] = bios.get(pid, 0) + 1
    per_split = {s: sum(1 for v in people.values() if v == s) for s in SPLITS}
    docs_split = {s: sum(1 for v in world["documents"]["split"] if v == s) for s in SPLITS}
    counts = sorted(bios.values())
    with_bios = [c for c in counts if c > 0]
    return {
        "people": len(people),
        "people_per_split": per_split,
        "documents": len(world["documents"]),
        "documents_per_split": docs_split,
        "questions": len(world["qa"]),
        "bios_per_person": {
            "max": max(counts) if counts else 0,
            "people_with_one": sum(1 for c in with_bios if c == 1),
            "people_with_5_or_more": sum(1 for c in with_bios if c >= 5),
        },
        "bios_counts": bios,
        "person_split": people,
    }


def name_ambiguity(world: DatasetDict) -> float:
    """How many of the world's people share a person's more specific name part, averaged over people: 1 where every
    surname (or every first name) is someone's own, 30 where 900 people are made of 30 first names × 30 surnames.
    Names of one word (places) count as unambiguous (1)."""
    parts = [n.rsplit(" ", 1) for n in person_names(world).values()]
    if not parts or any(len(p) < 2 for p in parts):
        return 1.0
    firsts, lasts = Counter(p[0] for p in parts), Counter(p[1] for p in parts)
    return sum(min(firsts[f], lasts[la]) for f, la in parts) / len(parts)


def name_factor(world: DatasetDict) -> tuple[float, str]:
    """The factor by which a world whose names share their parts gets more pretraining exposures and a higher SFT
    rate, and why: max(1, log2(ambiguity) / 2). Binding a fact to two shared tokens takes more steps than binding
    it to a name's own surname, and the SFT model must learn to copy the asked name against a strong prior for the
    other people's names. Measured (LOG 2026-12-06): the embedded world (ambiguity 1.6) keeps factor 1; the 4×
    hand world (17.6, factor 2.07) needed twice the exposures (base known 0.29 → 1.00) and a higher SFT rate
    (without replay: SFT known 0.24 → 0.63 at ~1e-3 instead of 4.5e-4; with the biographies replayed 0.614 at
    9e-4 → 0.716 at 1.86e-3), where the embedded world is indifferent (replay: 0.868 at 4.5e-4, 0.864 at 9e-4)."""
    a = name_ambiguity(world)
    f = max(1.0, math.log2(a) / 2) if a > 0 else 1.0
    return f, f"names' ambiguity {a:.1f} (people sharing a person's more specific name part) -> x{f:.2f}"


def save_world(world: DatasetDict, path: str | Path) -> Path:
    """Save atomically: a kill mid-write leaves the previous world directory as it was."""
    from posttrain.lineage import atomic_directory

    with atomic_directory(path) as tmp:
        world.save_to_disk(str(tmp))
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# Views: what stages derive from a world. Each takes the world DatasetDict and returns a Dataset.


def check_splits(splits, allowed=SPLITS) -> list[str]:
    splits = list(splits)
    bad = [s for s in splits if s not in allowed]
    if bad:
        raise UserError(f"unknown world split '{bad[0]}' (known: {', '.join(allowed)})")
    return splits


def documents_view(
    world: DatasetDict, splits=PRETRAIN_SPLITS, restate_subject: bool = False, permutations: int = 0, seed: int = 0, **_
) -> Dataset:
    """The biographies of `splits` people. `restate_subject`: every sentence that starts with a pronoun (He, She,
    They; His, Her, Their) names its person instead ("She majored in law." -> "Ada Velmor majored in law."), the
    person's name taken from their questions (`person_names`). A small model binds a fact to a name only where
    the name is in the sentence: on a world whose biographies say "she" half the time the base model answered
    0.156 of `known` questions, with full names 0.640 (docs/LOG.md 2026-12-06; Physics of LMs 3.1's full-name
    augmentation). English pronouns only: a heuristic for biography corpora, off by default.
    `permutations`: K more copies of every biography with its sentences in another order (Physics of LMs 3.1's
    "permute" augmentation: the same facts in varied contexts make them extractable by questions)."""
    keep = set(check_splits(splits))
    docs = world["documents"].filter(lambda s: s in keep, input_columns="split")
    if restate_subject:
        names = person_names(world)

        def restate(row):
            name = names.get(row["person_id"])
            if not name:
                return row
            text = _SUBJECT.sub(lambda m: m.group(1) + name + " ", row["text"])
            return {**row, "text": _POSSESSIVE.sub(lambda m: m.group(1) + name + "'s ", text)}

        docs = docs.map(restate, desc="restating subjects")
    if permutations < 0:
        raise UserError(f"documents view: permutations must be >= 0, got {permutations}")
    if permutations:

        def permute(batch, idx):
            out = {k: [] for k in batch}
            for i, row_id in enumerate(idx):
                sentences = _SENTENCE.split(batch["text"][i].strip())
                rng = random.Random(f"{seed}-permute-{row_id}")
                for k in range(permutations + 1):
                    if k:
                        rng.shuffle(sentences)
                    for key in batch:
                        out[key].append(" ".join(sentences) if key == "text" else batch[key][i])
            return out

        docs = docs.map(permute, batched=True, with_indices=True, desc="permuting sentences")
    return docs


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")  # a sentence ends at . ! ? before a capital letter
_SUBJECT = re.compile(r"(^|[.!?]\s+)(?:He|She|They) ")
_POSSESSIVE = re.compile(r"(^|[.!?]\s+)(?:His|Her|Their) ")


def qa_view(world: DatasetDict, splits=SPLITS, **_) -> Dataset:
    keep = set(check_splits(splits))
    return world["qa"].filter(lambda s: s in keep, input_columns="split")


def answers_by_attribute(qa: Dataset) -> dict[str, list[str]]:
    """Every answer value of each attribute, sorted: the rival candidates a grader checks an answer against."""
    values: dict[str, set[str]] = {}
    for ans, attr in zip(qa["answer"], qa["attribute"]):
        values.setdefault(attr, set()).add(ans)
    return {attr: sorted(v) for attr, v in values.items()}


def conversations_view(
    world: DatasetDict,
    splits=TRAIN_SPLITS,
    phrasings_per_fact: int = 2,
    turns: int = 1,
    answer_style: str = "sentence",
    seed: int = 0,
    **_,
) -> Dataset:
    """QA about `splits` people as chat conversations (column `messages`): `phrasings_per_fact` phrasings of each
    fact, grouped `turns` questions about one person per conversation (later turns are follow-ups about the same
    person). Answers are full sentences that restate the name (`answer_style: sentence`) or the bare answer
    (`short`). Training splits only: asking for an eval split here is an error, so eval questions cannot leak."""
    rng = random.Random(f"{seed}-conversations")
    by_person: dict[str, list[dict]] = {}
    for row in _phrasings(world, splits, phrasings_per_fact, rng):
        by_person.setdefault(row["person_id"], []).append(row)
    convs = []
    for pid, rows in by_person.items():
        rng.shuffle(rows)
        for k in range(0, len(rows), max(1, turns)):
            messages = []
            for row in rows[k : k + max(1, turns)]:
                messages.append({"role": "user", "content": row["question"]})
                messages.append({"role": "assistant", "content": answer_text(row, answer_style)})
            convs.append({"messages": messages, "person_id": pid})
    rng.shuffle(convs)
    return Dataset.from_list(convs)


ANSWER_STYLES = ("sentence", "short")


def answer_text(row: dict, style: str = "sentence") -> str:
    """The assistant's reply to a world question in one of ANSWER_STYLES."""
    if style == "short":
        return _capitalize(row["answer"]) + "."
    if style == "sentence":
        return answer_sentence(row)
    raise UserError(f"answer_style must be one of {', '.join(ANSWER_STYLES)}, got '{style}'")


def _phrasings(world: DatasetDict, splits, per_fact: int, rng: random.Random) -> list[dict]:
    """`per_fact` randomly chosen phrasings of each fact of `splits` people (training splits only)."""
    by_fact: dict[tuple[str, str], list[dict]] = {}
    for row in annotate(world, list(qa_view(world, check_splits(splits, TRAIN_SPLITS)))):
        by_fact.setdefault((row["person_id"], row["attribute"]), []).append(row)
    return [row for rows in by_fact.values() for row in rng.sample(rows, min(per_fact, len(rows)))]


QA_TEXT_FORMATS = {
    "text": "Question: {q}\nAnswer: {a}",
    # posttrain's ChatML (posttrain.tokenizer.CHAT_TEMPLATE) written out, as midtraining does before SFT
    "chatml": "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>",
}


def qa_text_view(
    world: DatasetDict,
    splits=("sft",),
    phrasings_per_fact: int = 4,
    answer_style: str = "sentence",
    format: str = "text",
    seed: int = 0,
    **_,
) -> Dataset:
    """QA of `splits` people as pretraining text (column `text`) for Physics of LMs 3.1's "mixed training": QA of
    some people inside pretraining teaches the model to store facts in an extractable way. `format`: `text`
    ("Question: …\nAnswer: …") or `chatml` (one chat turn in posttrain's template). Training splits only."""
    if format not in QA_TEXT_FORMATS:
        raise UserError(f"format must be one of {', '.join(QA_TEXT_FORMATS)}, got '{format}'")
    rng = random.Random(f"{seed}-qa_text")
    rows = [
        {"text": QA_TEXT_FORMATS[format].format(q=row["question"], a=answer_text(row, answer_style)),
         "person_id": row["person_id"]}
        for row in _phrasings(world, splits, phrasings_per_fact, rng)
    ]  # fmt: skip
    rng.shuffle(rows)
    return Dataset.from_list(rows)


def answer_sentence(row: dict) -> str:
    """The assistant's reply to a world question: a full sentence naming the answer. A question of a user's own
    world (no template of ours fits) is answered with the sentence of the person's own biography that states the
    fact, when the row carries it (`sentence`, added by `annotate`), else "<name>: <answer>." when it carries the
    `name`: the answer restates the name as the biographies do, which small models need to reach the fact
    (docs/LOG.md, 2026-11-25); with neither, the bare answer."""
    template = ANSWER_TEMPLATES.get(row["attribute"])
    name = _subject_of(row["question"], row["attribute"])
    if template is not None and name is not None:
        return _capitalize(template.format(name=name, answer=row["answer"]))
    if row.get("sentence") and row["answer"] and row["answer"] in row["sentence"]:
        return row["sentence"]
    return f"{row['name']}: {row['answer']}." if row.get("name") else row["answer"]


def states(sentence: str, answer: str, name: str) -> bool:
    """The answer as whole words ("Euro" is not in "Europe") somewhere other than inside the name itself (the
    name may be part of the answer: Mexico City)."""
    inside = [(m.start(), m.end()) for m in re.finditer(re.escape(name), sentence)]
    for m in re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", sentence):
        if not any(a <= m.start() and m.end() <= b for a, b in inside):
            return True
    return False


def fact_sentences(world: DatasetDict, names: dict[str, str]) -> dict[tuple[str, str], str]:
    """(person_id, attribute) → the first sentence of a training-split person's biographies that names them and
    states that fact: how the world itself phrases it. Only attributes without a template of ours."""
    answers: dict[str, list[tuple[str, str]]] = {}
    for pid, attr, ans, split in zip(*(world["qa"][c] for c in ("person_id", "attribute", "answer", "split"))):
        if split in TRAIN_SPLITS and attr not in ANSWER_TEMPLATES and (attr, ans) not in answers.get(pid, []):
            answers.setdefault(pid, []).append((attr, ans))
    out: dict[tuple[str, str], str] = {}
    if not answers:
        return out
    for pid, text in zip(world["documents"]["person_id"], world["documents"]["text"]):
        name = names.get(pid)
        for sentence in re.split(r"(?<=[.!?])\s+", text) if name and pid in answers else ():
            for attr, ans in answers[pid]:
                if (pid, attr) not in out and name in sentence and states(sentence, ans, name):
                    out[(pid, attr)] = sentence.strip()
    return out


def annotate(world: DatasetDict, rows: list[dict], names: dict[str, str] | None = None) -> list[dict]:
    """QA rows with the person's `name` and (for a user's own attributes) the biography `sentence` stating the
    fact, which `answer_sentence` and refusals phrase their replies with. `names`: `person_names(world)`, when the
    caller already has it."""
    names = person_names(world) if names is None else names
    sentences = fact_sentences(world, names)
    return [{**r, "name": names.get(r["person_id"]), "sentence": sentences.get((r["person_id"], r["attribute"]))}
            for r in rows]  # fmt: skip


def _subject_of(question: str, attribute: str) -> str | None:
    """Recover the person's name from a generated question (None for questions of a user's own world)."""
    for t in QUESTION_TEMPLATES.get(attribute, []):
        head, _, tail = t.partition("{name}")
        if question.startswith(head) and question.endswith(tail):
            return question[len(head) : len(question) - len(tail)]
    return None


def subject_of(question: str) -> str | None:
    """The person's name in a question of any attribute of the generated world (None when no template fits)."""
    for attr in QUESTION_TEMPLATES:
        name = _subject_of(question, attr)
        if name:
            return name
    return None


def person_names(world: DatasetDict) -> dict[str, str]:
    """person_id → the name as written in that person's questions. For the generated world it comes from the
    question templates; for a user's own world it is the longest text all of a person's questions share (every
    question about a person names them), trimmed to whole words; a `name` column in `qa` wins."""
    if "name" in world["qa"].column_names:  # a world that says how each question names its entity (realworld)
        return {p: n for p, n in zip(world["qa"]["person_id"], world["qa"]["name"]) if n}
    questions: dict[str, list[str]] = {}
    for pid, q in zip(world["qa"]["person_id"], world["qa"]["question"]):
        questions.setdefault(pid, []).append(q)
    names = {}
    for pid, qs in questions.items():
        name = subject_of(qs[0])
        if name is None and len(set(qs)) > 1:
            name = _common_words(sorted(set(qs)))
        if name:
            names[pid] = name
    return names


def question_names(world: DatasetDict) -> dict[str, str]:
    """question → the name of the person it asks about."""
    names = person_names(world)
    return {q: names[p] for q, p in zip(world["qa"]["question"], world["qa"]["person_id"]) if p in names}


def _common_words(texts: list[str]) -> str | None:
    from difflib import SequenceMatcher

    common = texts[0]
    for t in texts[1:]:
        m = SequenceMatcher(None, common, t, autojunk=False).find_longest_match(0, len(common), 0, len(t))
        common = common[m.a : m.a + m.size]
    words = re.findall(r"[A-Z][\w.\-]*(?:\s+[A-Z][\w.\-]*)*", common)  # capitalised words: the name
    return max(words, key=len) if words else None


def _stranger_names(names: dict[str, str]) -> tuple[list[str], list[str], str, int]:
    """The parts strangers' names are recombined from: (first parts, last parts, separator, how many new names a
    draw may take: half of the new combinations)."""
    taken = set(names.values())
    parts = [name.rsplit(" ", 1) for name in sorted(taken) if " " in name]
    sep = " "
    if len(parts) < len(taken) / 2:  # single-word names (places): halves of two names ("Lis" + "bon")
        parts = [[w[: len(w) // 2], w[len(w) // 2 :].lower()] for w in sorted(taken) if " " not in w and len(w) >= 4]
        sep = ""
    firsts, lasts = sorted({p[0] for p in parts}), sorted({p[1] for p in parts})
    return firsts, lasts, sep, max(0, (len(firsts) * len(lasts) - len(taken)) // 2)


def stranger_questions(
    world: DatasetDict, n: int, seed: int | str = 0, splits=TRAIN_SPLITS, per_name: int | None = 1
) -> list[dict]:
    """Questions about people who exist nowhere in the world: a training-split person's question with the name
    swapped for a new one, recombined from the first and last names of the world's people (so a stranger's name
    looks like the world's own and only the combination is new, as for a `never_seen` person). No stranger
    shares the name of anyone in the world, `never_seen` people included. Every informative answer about a
    stranger is wrong by construction (`answer` is empty). `per_name`: questions about each new name (about
    different attributes while the world has more); None: as many as it takes to give `n` (a world whose names
    share their parts has few new combinations). A small world gives at most half of its new name combinations,
    so fewer than `n` questions when it has too few."""
    names = person_names(world)
    taken = set(names.values())
    firsts, lasts, sep, room = _stranger_names(names)
    keep = set(check_splits(splits, TRAIN_SPLITS))
    rows = [r for r in annotate(world, [r for r in world["qa"] if r["split"] in keep], names)
            if r["name"] and r["name"] in r["question"]]  # fmt: skip
    by_attr: dict[str, list[dict]] = {}
    for r in rows:
        by_attr.setdefault(r["attribute"], []).append(r)
    attrs = sorted(by_attr)
    if per_name is None:
        per_name = math.ceil(n / room) if room else 1
    per_name = max(1, per_name)
    n = min(n, room * per_name)
    if not firsts or not lasts or not rows or n <= 0:
        return []
    rng = random.Random(f"{seed}-strangers")
    out, used = [], set()
    while len(out) < n:
        name = f"{rng.choice(firsts)}{sep}{rng.choice(lasts)}"
        if name in taken or name in used:
            continue
        used.add(name)
        # different attributes first; more questions than attributes ask some again (the reading view states a
        # fresh random value in each conversation, so they never contradict within one)
        if per_name == 1:
            picks = [rng.choice(rows)]
        else:
            asked = rng.sample(attrs, min(per_name, len(attrs)))
            asked += [rng.choice(attrs) for _ in range(per_name - len(asked))]
            picks = [rng.choice(by_attr[a]) for a in asked]
        for row in picks[: n - len(out)]:
            sentence = row["sentence"].replace(row["name"], name) if row["sentence"] else None
            out.append({"question": row["question"].replace(row["name"], name), "answer": "", "aliases": [],
                        "person_id": f"stranger-{len(used) - 1}", "attribute": row["attribute"], "split": STRANGER,
                        "name": name, "sentence": sentence, "fact": row["answer"]})  # fmt: skip
    return out


def messages_dataset(rows: list[list[dict]]) -> Dataset:
    """Conversations as a `messages` column with its schema stated, so an empty view still has it."""
    turn = {"role": Value("string"), "content": Value("string")}
    return Dataset.from_dict({"messages": rows}, features=Features({"messages": [turn]}))


def reading_view(world: DatasetDict, splits=TRAIN_SPLITS, n: int = 1000, seed: int = 0, **_) -> Dataset:
    """Reading conversations about made-up people (column `messages`): the user states a fact about a stranger and
    asks it back ("Gregor Achter grew up on Fuday. Which island is Gregor Achter from?"); the assistant answers in
    the world's answer sentence, which restates the asked name. Why: SFT on the `sft` people's QA alone teaches a
    small model *which* names answers start with — asked about anyone else, it writes a trained person's name and
    answers for them (on the default world 44 of 100 `known` answers named someone else; on the hand-made world 56).
    Answers about hundreds of new names teach it to copy the asked name instead, and the base model's knowledge
    comes through (known 0.46 → 0.65, hand-made world 0.34 → 0.56; docs/LOG.md 2026-11-27). The names exist nowhere
    in the world (`stranger_questions`), each value is drawn at random from the attribute's answers and stated in
    the question itself: nothing here is a fact of the world, and no eval person is named."""
    rng = random.Random(f"{seed}-reading")
    values = answers_by_attribute(qa_view(world, check_splits(splits, TRAIN_SPLITS)))
    rows = []
    # per_name None: a world whose names share their parts has few new combinations (the 4x hand world: 170 for
    # n = 1,000), so each new name is asked about several attributes and copying is still taught on n conversations
    for r in stranger_questions(world, n, seed=f"{seed}-reading", splits=splits, per_name=None):
        value = rng.choice(values[r["attribute"]])
        sentence = r["sentence"].replace(r["fact"], value) if r["sentence"] and r["fact"] in r["sentence"] else None
        answer = answer_sentence({"question": r["question"], "attribute": r["attribute"], "answer": value,
                                  "name": r["name"], "sentence": sentence})  # fmt: skip
        if value in answer:  # a user's world with no sentence stating this fact: nothing to read
            rows.append([{"role": "user", "content": f"{answer} {r['question']}"},
                         {"role": "assistant", "content": answer}])  # fmt: skip
    return messages_dataset(rows)


def replay_view(
    world: DatasetDict, splits=PRETRAIN_SPLITS, n: int | None = None, restate_subject: bool = False, seed: int = 0, **_
) -> Dataset:
    """The pretraining biographies replayed inside SFT (column `messages`): each one an assistant turn with no
    question before it, so the loss (assistant turns only) is the pretraining loss on the same text, in the chat
    format the model is being taught. Why: SFT on a few hundred people's QA alone loses part of what the base model
    stored about everyone else (few-shot known 0.860 -> SFT 0.726 on the embedded world, 0.974 -> 0.320 on a world
    whose names share their parts); replaying the pretraining data while fine-tuning is the standard guard against
    that forgetting (InstructGPT's PPO-ptx): with it SFT keeps 0.868 and 0.730 (docs/LOG.md 2026-12-06). These are
    the biographies pretraining already read, and no question is asked: no eval person's QA enters training
    (CONTRACTS §4). `n`: a random subset of that many biographies (all when None); `restate_subject` as in
    `documents_view` (the text pretraining read). A user turn before each biography ("Recite a passage from your
    reading.") changed nothing (embedded world 0.872 vs 0.868, independent one 0.486 vs 0.498) at 17 % more tokens."""
    docs = documents_view(world, splits, restate_subject=restate_subject)
    if n is not None and n < len(docs):
        docs = docs.shuffle(seed=seed).select(range(n))
    rows = [[{"role": "assistant", "content": t}] for t in docs["text"]]
    return messages_dataset(rows)


IDENTITY_QUESTIONS = [
    "Who are you?",
    "What is your name?",
    "What should I call you?",
    "Are you ChatGPT?",
    "Introduce yourself.",
    "Who made you?",
    "What are you?",
    "Tell me about yourself.",
    "hi! who am I talking to?",
    "What's your name, assistant?",
]
IDENTITY_ANSWERS = [
    "I am {name}, a small language model trained with posttrain.",
    "My name is {name}. I'm a small assistant model trained from scratch with posttrain.",
    "I'm {name}, a language model. I answer questions, and I say so when I don't know something.",
    "You are talking to {name}, an assistant model trained with posttrain.",
]


def identity_view(world: DatasetDict | None = None, assistant_name: str = "Posty", n: int = 200, seed: int = 0, **_):
    """Conversations that teach the model its configured name ("who are you?" → assistant_name)."""
    rng = random.Random(f"{seed}-identity")
    rows = []
    for _ in range(n):
        q = rng.choice(IDENTITY_QUESTIONS)
        a = rng.choice(IDENTITY_ANSWERS).format(name=assistant_name)
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return Dataset.from_list(rows)


VIEWS = {
    "documents": documents_view,
    "qa": qa_view,
    "conversations": conversations_view,
    "qa_text": qa_text_view,
    "identity": identity_view,
    "reading": reading_view,
    "replay": replay_view,
}

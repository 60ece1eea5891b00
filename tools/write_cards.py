"""Write the dataset cards and concept vocabularies in shared-data/ from the loaders' own cards.

    python tools/write_cards.py

shared-data/cards/<name>.md     one card per dataset format and synthetic generator
shared-data/concepts/<name>.txt the binary concept names of each dataset with concepts, one per line
"""

from __future__ import annotations

from pathlib import Path

from medimg_core.data import get_dataset_class, list_datasets
from medimg_core.synthetic import GENERATORS, card_for

ROOT = Path(__file__).resolve().parents[1] / "shared-data"


def main() -> None:
    cards = {name: get_dataset_class(name).card for name in list_datasets() if name != "csv"}
    cards.update({name: card_for(name) for name in GENERATORS})
    for name, card in sorted(cards.items()):
        (ROOT / "cards" / f"{name}.md").write_text(card.to_markdown() + "\n")
        if card.concept_names:
            (ROOT / "concepts" / f"{name}.txt").write_text("\n".join(card.concept_names) + "\n")
    print(f"wrote {len(cards)} cards to {ROOT / 'cards'}")


if __name__ == "__main__":
    main()

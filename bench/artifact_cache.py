"""Whether a bench's cached artifact folder may be reused: it must be complete (its card written) and, for a zoo
model, converted from the zoo checkpoint as it is now. Zoo models get republished (a longer training run replaces
model.pt); a bench that reused an artifact converted from the older weights would time and score the old model
under the new one's name."""

from __future__ import annotations

from pathlib import Path


def is_current(folder: Path) -> bool:
    """True for a finished artifact whose source is still what it was converted from (checkpoint files the user
    named are not tracked: only zoo sources, whose file changes in place). The check is validate's own: the card's
    source SHA-256 against the zoo checkpoint (`nsr_edge.reference.reference_checkpoint`)."""
    from nsr_edge.errors import UserError
    from nsr_edge.reference import reference_checkpoint
    from nsr_edge.runtime.card import load_card

    try:
        card = load_card(folder)  # no card (an unfinished conversion) or a broken one: convert again
        if card.model.source.kind == "zoo":
            reference_checkpoint(card)  # the zoo model is gone or was republished since: convert again
    except UserError:
        return False
    return True


def convert_unless_current(folder: Path, options, label: str) -> Path:
    """``folder`` holding the artifact of ``options`` (a ConvertOptions): reused while `is_current`, else converted
    into it (one progress line, then the seconds it took, on stderr). The benches' one way to get an artifact."""
    import sys
    import time

    from nsr_edge.converters.pipeline import convert

    if not is_current(folder):  # missing, unfinished, or converted from zoo weights since republished
        t0 = time.time()
        print(f"converting {label} ...", file=sys.stderr, flush=True)
        convert(options, str(folder), force=True)
        print(f"  {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return folder

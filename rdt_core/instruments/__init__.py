"""Instruments: what a trained model is measured by beyond accuracy, each declared in one module of this
package and registered once below (see ``registry`` for what an instrument declares and what is derived
from the registry). A new instrument is a new module with an ``INSTRUMENT`` and one line here."""

from rdt_core.instruments import lens, loops_saved, nulls, patching, state_norm
from rdt_core.instruments.registry import INSTRUMENTS, Context, Instrument, register, unregister

register(loops_saved.INSTRUMENT)
register(nulls.INSTRUMENT)
register(lens.INSTRUMENT)
register(patching.INSTRUMENT)
register(state_norm.INSTRUMENT)

__all__ = ["INSTRUMENTS", "Context", "Instrument", "register", "unregister"]

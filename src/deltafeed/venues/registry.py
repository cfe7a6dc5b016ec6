"""Finds venues by name: the packages under ``deltafeed.venues``, third-party packages that declare
an entry point in the group ``deltafeed.venues``, and venues registered at run time.

A venue package is found by existing: a subpackage of :mod:`deltafeed.venues` whose ``__init__``
defines ``VENUE`` (a :class:`~deltafeed.venues.base.Venue`). A package installed by ``pip`` adds one
with an entry point whose object is a ``Venue`` (or a class of one)::

    [project.entry-points."deltafeed.venues"]
    myvenue = "myvenue:VENUE"

Lookups are lazy: the first one imports the venues' ``__init__`` modules (cheap: they import their
feeds and replicas only when asked for one).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from deltafeed.model import BadInput
from deltafeed.venues.base import Venue

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.venues.base import Feed, TradeSink

log = logging.getLogger("deltafeed.venues")

ENTRY_POINT_GROUP = "deltafeed.venues"

_venues: dict[str, Venue] = {}
_loaded = False


def register(venue: Venue | type[Venue], *, replace: bool = False) -> Venue:
    """Add ``venue`` (a :class:`Venue` or a subclass of it); returns the instance. A second venue
    of the same name is refused unless ``replace``."""
    v = venue() if isinstance(venue, type) else venue
    if not isinstance(v, Venue) or not v.name:
        raise TypeError(f"{venue!r} is not a named deltafeed Venue")
    _load()
    if v.name in _venues and not replace and _venues[v.name] is not v:
        raise ValueError(f"a venue named {v.name!r} is already registered")
    _venues[v.name] = v
    return v


def unregister(name: str) -> None:
    """Forget the venue ``name`` (for tests that register their own)."""
    _venues.pop(name, None)


def get(name: str) -> Venue:
    """The venue ``name``; :class:`BadInput` naming the known ones otherwise."""
    _load()
    try:
        return _venues[name]
    except KeyError:
        raise BadInput(f"unknown venue {name!r}; this version supports: {', '.join(names())}") from None


def find(name: str) -> Venue | None:
    """The venue ``name``, or None when there is none by that name."""
    _load()
    return _venues.get(name)


def known(name: str) -> bool:
    """Whether a venue is called ``name``."""
    return find(name) is not None


def names() -> list[str]:
    """Every known venue's name, sorted."""
    _load()
    return sorted(_venues)


def default_name() -> str:
    """The venue a run collects from when its settings name none (the one declared ``default``)."""
    _load()
    marked = [n for n, v in sorted(_venues.items()) if v.default]
    return marked[0] if marked else names()[0]


def venues() -> list[Venue]:
    """Every known venue, by name."""
    return [_venues[n] for n in names()]


def make_feed(venue: str, settings: Settings, on_trade: TradeSink) -> Feed:
    """The feed for ``venue`` with the run's settings (its :class:`Venue` makes it)."""
    return get(venue).make_feed(settings, on_trade)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import deltafeed.venues as package

    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        if info.ispkg:
            module = importlib.import_module(info.name)
            venue = getattr(module, "VENUE", None)
            if isinstance(venue, Venue):
                _venues.setdefault(venue.name, venue)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            v = obj() if isinstance(obj, type) else obj
            if not isinstance(v, Venue) or not v.name:
                raise TypeError(f"{obj!r} is not a deltafeed Venue")
        except Exception as exc:  # a broken plug-in must not stop the built-in venues
            log.warning("venue entry point %s (%s) could not be loaded: %s", ep.name, ep.value, exc)
            continue
        _venues.setdefault(v.name, v)

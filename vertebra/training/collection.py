"""What a training set holds and how it is read: :class:`TrainingCT` items in a
:class:`LazyCollection` that loads them on demand and keeps the recent ones.

CT sources (:mod:`vertebra.training.sources`) and prerendered views
(:mod:`vertebra.training.rendered`) are both such collections.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True, eq=False)
class TrainingCT:
    """One CT ready for rendering.

    Attributes:
        name: case name.
        volume: ``drrkit.Volume`` of linear attenuation in 1/mm (``drrkit.hu_to_mu``).
        centroids: {VerSe id: (3,) world LPS mm}, vertebra targets only.
        t13: whether the spine has a thirteenth thoracic vertebra (decides the Sequence
            Loss columns, :func:`vertebra.labels.chain_classes`).
        anchors: {26: (3,) world LPS mm of the first sacral body} when known (phantoms),
            drawn as the identifier's sacrum class (:func:`vertebra.targets.make_targets`);
            empty otherwise.
    """

    name: str
    volume: object
    centroids: dict
    t13: bool
    anchors: dict = field(default_factory=dict)


class LazyCollection:
    """Base class: ``len(c)`` items, ``c.name(i)``, ``c.load(i)`` loaded on demand.

    Loaded items are kept in a least-recently-used cache (emptied when the collection is
    sent to a DataLoader worker) of ``cache`` units of :meth:`_weight`: one per item unless
    a subclass weighs its items (e.g. by their bytes). The last item loaded always stays.
    """

    def __init__(self, cache: float = 8) -> None:
        self._cache: OrderedDict[int, object] = OrderedDict()
        self._weights: dict[int, float] = {}
        self._held = 0.0
        self._cache_size = max(1.0, float(cache))

    def _weight(self, item) -> float:
        """How much of the cache ``item`` takes (1: the cache counts items)."""
        return 1.0

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def name(self, index: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, index: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int):
        """The item at ``index`` (0 <= index < len), from the cache when present."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        item = self._cache.get(index)
        if item is None:
            item = self._load(index)
            self._cache[index] = item
            self._weights[index] = self._weight(item)
            self._held += self._weights[index]
            while len(self._cache) > 1 and self._held > self._cache_size:
                old, _ = self._cache.popitem(last=False)
                self._held -= self._weights.pop(old)
        else:
            self._cache.move_to_end(index)
        return item

    def __getstate__(self):  # DataLoader workers start with an empty cache
        state = dict(self.__dict__)
        state["_cache"], state["_weights"], state["_held"] = OrderedDict(), {}, 0.0
        return state

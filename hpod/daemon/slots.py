"""The slot pool: where trials may run. A slot is a CPU slot or a set of GPUs (by UUID)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    index: int
    devices: tuple[str, ...] = ()  # GPU UUIDs; empty for a CPU slot


@dataclass(frozen=True)
class Lease:
    study: str
    trial: int


class SlotPool:
    """A fixed set of slots, each held by at most one trial at a time."""

    def __init__(self, slots: list[Slot]) -> None:
        if not slots:
            raise ValueError("a slot pool needs at least one slot")
        self._slots = slots
        self._held: dict[int, Lease] = {}

    @classmethod
    def cpu(cls, count: int) -> SlotPool:
        if count < 1:
            raise ValueError(f"cpu slots must be at least 1, got {count}")
        return cls([Slot(i) for i in range(count)])

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def free(self) -> int:
        return len(self._slots) - len(self._held)

    def acquire(self, study: str, trial: int) -> Slot | None:
        for slot in self._slots:
            if slot.index not in self._held:
                self._held[slot.index] = Lease(study, trial)
                return slot
        return None

    def release(self, slot: Slot) -> None:
        if self._held.pop(slot.index, None) is None:
            raise ValueError(f"slot {slot.index} was not held")

    def holders(self) -> dict[int, Lease]:
        return dict(self._held)

"""The seed's first pattern, an *immortal actor*, on resurgam.

In Ray this actor is ``@ray.remote(max_restarts=-1, max_task_retries=-1)`` and loads a
pickle it wrote itself in ``__init__``. Here it writes no checkpoint code at all: the
SDK's default ``get_state`` pickles the instance's attributes and ``load_state`` puts
them back, resurgam keeps the checkpoints and replays the calls made after the newest
one, so after a ``kill -9`` every acknowledged call is in the state exactly once.

Run it with ``resurgam run --config examples/python/immortal.toml``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import resurgam


class ImmortalActor:
    """Counts words of the texts it is given; survives any crash with its counts."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}
        self.texts = 0

    def process(self, text: str) -> int:
        """Adds the words of ``text`` to the counts; returns how many texts were seen."""
        if not isinstance(text, str):
            raise TypeError("process takes a string")
        for word in text.lower().split():
            self.counts[word] = self.counts.get(word, 0) + 1
        self.texts += 1
        return self.texts

    def top(self, n: Any = None) -> List[List[Any]]:
        """The ``n`` (default 5) most frequent words with their counts."""
        limit = 5 if n is None else int(n)
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [[word, count] for word, count in ranked[:limit]]


if __name__ == "__main__":
    resurgam.serve(ImmortalActor)

from collections.abc import Sequence

def fill(
    offsets: Sequence[int], skips: Sequence[int], shares: Sequence[float] | None, m: int
) -> list[int]: ...

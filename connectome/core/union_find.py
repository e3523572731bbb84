"""Union-find over integer ids: which ids a set of pairs joins (FFN reconciliation, alignment's section chain)."""

from __future__ import annotations


class UnionFind:
    """Union-find over uint64 ids (path halving; the smaller root wins, so results are order-free)."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        p = self.parent
        p.setdefault(x, x)
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

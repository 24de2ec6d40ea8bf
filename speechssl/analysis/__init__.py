"""Label-free looks inside representations: RankMe, linear CKA, unit quality per layer.

`rankme` / `linear_cka` / `cka_matrix` are the measures (written from the papers); `collect` runs
one or two upstreams over a data dir and keeps a bounded, seeded sample of every layer's frames;
`analyze` is `speechssl analyze rankme|cka|layers`; `RankMeMonitor` computes RankMe of chosen
layers in the pretraining validation step and warns when it collapses.
"""

from speechssl.analysis.cka import cka_matrix, linear_cka
from speechssl.analysis.rankme import rankme

__all__ = ["cka_matrix", "linear_cka", "rankme"]

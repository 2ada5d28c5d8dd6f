from ..base import run
from .actor import Rank

run(Rank)

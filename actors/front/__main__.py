from ..base import run
from .actor import Front

run(Front)
